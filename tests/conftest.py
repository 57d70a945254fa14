"""Fixtures: the scripted model server, settings that point the app at it, and socket clients."""
from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.test import Client

import config.asgi  # noqa: F401  (set up once now: django.setup() re-applies LOGGING, which would drop caplog's handler mid-test)
from chatrooms import assistant, recovery
from chatrooms.scripted_model_server import ScriptedModelServer
from tests.servers import DaphneWorker, scripted_worker_env

FRAME_TIMEOUT = 10


def require_service(name: str, available: bool, why: str) -> None:
    """Skip on a laptop that lacks a service; fail in CI, where every service must be there."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{name} is required in CI: {why}")
    pytest.skip(f"{name} not available: {why}")


@pytest.fixture(scope="session")
def model_server() -> ScriptedModelServer:
    server = ScriptedModelServer().start()
    yield server
    server.stop()


@pytest.fixture
def worker(model_server: ScriptedModelServer) -> DaphneWorker:
    """A real daphne process on the test database, answering with the scripted model server.

    Tests that use it need `pytest.mark.django_db(transaction=True)`: the server sees committed rows only.
    """
    model_server.reset()
    server = DaphneWorker(scripted_worker_env(model_server)).start()
    yield server
    server.stop()
    print(server.output())  # shown by pytest when the test fails


@pytest.fixture
def scripted_model(model_server: ScriptedModelServer, settings: Any) -> ScriptedModelServer:
    """Point the app at the scripted server through litellm's OpenAI-compatible provider."""
    model_server.reset()
    settings.LLM_MODEL = "openai/scripted"
    settings.LLM_MODELS = ["openai/scripted=Scripted", "openai/other=Other"]
    settings.LLM_API_BASE = model_server.base_url
    settings.LLM_API_KEY = "test-key"
    return model_server


@pytest.fixture(autouse=True)
def fresh_channel_layer() -> None:
    """Each test has its own event loop; the in-memory layer's queues must not outlive it."""
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(autouse=True)
def fresh_limit_counters() -> None:
    """The per-user limits count in the cache, which outlives a test (and user ids repeat after a
    flush): every test starts from zero."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
async def replies_settled() -> None:
    """After the test, let replies that are still running end, so none leaks into the next test."""
    yield
    running = [run.task for run in list(assistant.RUNNING.values()) if run.task]
    running += list(recovery._after_cancel.values())  # a cancel's later look for a lost worker
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running, timeout=10)
    assistant.RUNNING.clear()


class ChatClient:
    """A protocol client over Channels' WebsocketCommunicator, logged in with a real session cookie."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.seen: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self.communicator.send_to(text_data=text)

    async def receive(self, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
        frame = json.loads(await self.communicator.receive_from(timeout=timeout))
        self.seen.append(frame)
        return frame

    async def receive_until(self, frame_type: str, timeout: float = FRAME_TIMEOUT, **match: Any) -> list[dict[str, Any]]:
        """Frames up to and including the first of `frame_type` (whose fields equal `match`)."""
        frames = []
        while True:
            frame = await self.receive(timeout)
            frames.append(frame)
            if frame["type"] == frame_type and all(frame.get(k) == v for k, v in match.items()):
                return frames

    async def receive_until_text(self, text: str, timeout: float = FRAME_TIMEOUT) -> list[dict[str, Any]]:
        """Frames up to the chunk after which the text deltas read by this call contain `text`. The
        server coalesces deltas that arrive together, so a test counts text, never chunks."""
        frames, shown = [], ""
        while text not in shown:
            frame = await self.receive(timeout)
            frames.append(frame)
            if frame["type"] == "stream.chunk" and frame["chunk"]["type"] == "text-delta":
                shown += frame["chunk"]["delta"]
        return frames

    async def nothing_more(self) -> bool:
        return await self.communicator.receive_nothing(timeout=0.2)

    async def close(self) -> None:
        await self.communicator.disconnect()


async def session_cookie_for(user: Any) -> str:
    client = Client()
    await database_sync_to_async(client.force_login)(user)
    return client.cookies["sessionid"].value


async def open_chat_client(
    user: Any, clients: list[ChatClient], *, origin: str = "http://127.0.0.1:8000", expect_hello: bool = True
) -> ChatClient:
    """A ChatClient for `user` (None: anonymous) past `hello` and `rooms`, remembered in `clients`."""
    from config.asgi import application

    headers = [(b"origin", origin.encode()), (b"host", b"127.0.0.1:8000")]
    if user is not None:
        headers.append((b"cookie", f"sessionid={await session_cookie_for(user)}".encode()))
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, code = await communicator.connect(timeout=FRAME_TIMEOUT)
    client = ChatClient(communicator)
    client.connected, client.close_code = connected, code
    clients.append(client)
    if connected and expect_hello:
        hello = await client.receive()
        assert hello["type"] == "hello"
        client.hello = hello
        rooms = await client.receive()
        assert rooms["type"] == "rooms"
    return client


async def close_clients(clients: list[ChatClient]) -> None:
    for client in clients:
        try:
            await client.close()
        except (Exception, asyncio.CancelledError):
            # A receive that timed out cancelled the app: disconnect re-raises that CancelledError, a
            # BaseException that would abort pytest's teardown (and the database flush) for every later test.
            pass
    clients.clear()


@pytest.fixture
async def connect(replies_settled: None):
    """connect(user) -> ChatClient past `hello` and `rooms`; every client is closed after the test."""
    clients: list[ChatClient] = []

    async def open_client(user: Any, **options: Any) -> ChatClient:
        return await open_chat_client(user, clients, **options)

    yield open_client
    await close_clients(clients)


@pytest.fixture
def connect_factory():
    """For tests that run their own event loops (hypothesis): a fresh (connect, close_all) per loop."""

    def make() -> tuple[Any, Any]:
        channel_layers.backends.clear()
        clients: list[ChatClient] = []

        async def open_client(user: Any, **options: Any) -> ChatClient:
            return await open_chat_client(user, clients, **options)

        async def close_all() -> None:
            await close_clients(clients)
            running = [run.task for run in list(assistant.RUNNING.values()) if run.task]
            running += list(recovery._after_cancel.values())
            for task in running:
                task.cancel()
            if running:
                await asyncio.wait(running, timeout=10)

        return open_client, close_all

    return make
