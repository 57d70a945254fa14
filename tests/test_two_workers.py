"""Two daphne workers on one database and a real Redis: replay, cancel and recovery cross workers."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile

import pytest
import websockets
from channels.db import database_sync_to_async

from chatrooms.models import Message
from chatrooms.scripted_model_server import ScriptedReply
from tests.conftest import require_service
from tests.factories import make_user
from tests.servers import DaphneWorker, free_port, scripted_worker_env
from tests.test_end_to_end import frames_until, log_in
from tests.test_worker_shutdown import wait_for_chunks_stored

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


@pytest.fixture(scope="session")
def redis_url():
    """REDIS_URL when the run has one, else a redis-server of our own on a free port."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    require_service("Redis", binary is not None, "install redis-server (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="chatrooms-redis-")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", workdir], stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None:
                pytest.fail("redis-server exited at start")
            import time

            time.sleep(0.05)  # polling a port that has no readiness event
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


def worker_env(model_server, redis_url: str) -> dict[str, str]:
    return scripted_worker_env(model_server, REDIS_URL=redis_url, STREAM_HEARTBEAT_SECONDS="1", STREAM_STALE_SECONDS="3")


async def open_socket(worker: DaphneWorker):
    cookie = await database_sync_to_async(log_in)(worker.http_url, "sam", "a-long-enough-password")
    ws = await websockets.connect(worker.ws_url, additional_headers={"Cookie": cookie, "Origin": worker.http_url})
    await frames_until(ws, "rooms")
    return ws


def text_of(frames: list[dict]) -> str:
    return "".join(f["chunk"]["delta"] for f in frames
                   if f["type"] == "stream.chunk" and f["chunk"]["type"] == "text-delta")


async def test_join_cancel_and_recovery_across_two_workers(model_server, redis_url):
    model_server.reset()
    await database_sync_to_async(make_user)("sam", "a-long-enough-password")
    env = worker_env(model_server, redis_url)
    worker_a, worker_b = DaphneWorker(env).start(), DaphneWorker(env).start()
    try:
        on_a, on_b = await open_socket(worker_a), await open_socket(worker_b)
        await on_a.send(json.dumps({"type": "room.create", "name": "Across"}))
        room_id = (await frames_until(on_a, "room.created"))[-1]["room"]["id"]
        await on_a.send(json.dumps({"type": "room.join", "roomId": room_id}))
        await frames_until(on_a, "messages")

        # 1. A stream on worker A, joined from worker B: replay, then live chunks.
        model_server.enqueue(ScriptedReply(tokens=[f"t{i} " for i in range(20)], hold_open=True))
        await on_a.send(json.dumps({"type": "chat.send", "requestId": "r1", "text": "go"}))
        seen_on_a = await frames_until(on_a, "stream.chunk")
        while text_of(seen_on_a).count("t") < 5:
            seen_on_a.append(json.loads(await asyncio.wait_for(on_a.recv(), 60)))
        await on_b.send(json.dumps({"type": "room.join", "roomId": room_id}))
        joined = await frames_until(on_b, "stream.replay_complete")
        assert [f["type"] for f in joined if f["type"] != "rooms"][:2] == ["messages", "stream.resuming"]

        # 2. Cancel sent to worker B stops the stream that runs on worker A.
        while text_of(joined) != "".join(f"t{i} " for i in range(20)):
            joined.append(json.loads(await asyncio.wait_for(on_b.recv(), 60)))
        await on_b.send(json.dumps({"type": "chat.cancel", "requestId": "r1"}))
        done_b = await frames_until(on_b, "stream.done")
        frames_b = joined + done_b
        assert done_b[-1]["status"] == "aborted"
        indexes = [f["index"] for f in frames_b if f["type"] == "stream.chunk"]
        assert indexes == list(range(len(indexes)))
        assert text_of(frames_b) == done_b[-1]["message"]["content"]
        done_a = (await frames_until(on_a, "stream.done"))[-1]
        assert done_a["message"] == done_b[-1]["message"]
        assert model_server.client_disconnected.wait(2)

        # 3. Worker A dies mid-stream; worker B's sweep finishes the stream and tells its viewer.
        model_server.reset()
        model_server.enqueue(ScriptedReply(tokens=["last ", "words"], hold_open=True))
        await on_a.send(json.dumps({"type": "chat.send", "requestId": "r2", "text": "again"}))
        live = await frames_until(on_b, "stream.start")
        while text_of(live) != "last words":
            live.append(json.loads(await asyncio.wait_for(on_b.recv(), 60)))
        stream_id = live[-1]["streamId"]
        await wait_for_chunks_stored(stream_id, live[-1]["index"] + 1)  # past the flush window
        worker_a.stop(signal.SIGKILL)
        done = (await frames_until(on_b, "stream.done"))[-1]
        assert done["status"] == "interrupted" and done["requestId"] == "r2"
        stored = await database_sync_to_async(Message.objects.get)(pk=int(done["message"]["id"]))
        assert stored.status == "interrupted" and stored.content == done["message"]["content"]
        assert stored.content == "last words" == text_of(live)
        await on_b.close()
    finally:
        worker_a.stop(signal.SIGKILL)
        worker_b.stop()


async def test_a_tool_approval_sent_to_another_worker_reaches_the_stream_and_both_are_healthy(model_server, redis_url):
    import urllib.request

    model_server.reset()
    await database_sync_to_async(make_user)("sam", "a-long-enough-password")
    env = worker_env(model_server, redis_url)
    worker_a, worker_b = DaphneWorker(env).start(), DaphneWorker(env).start()
    try:
        for worker in (worker_a, worker_b):
            with urllib.request.urlopen(f"{worker.http_url}/healthz", timeout=10) as response:
                health = json.loads(response.read())
            assert response.status == 200 and health["database"].startswith("ok")
            assert health["channelLayer"].startswith("ok")

        on_a, on_b = await open_socket(worker_a), await open_socket(worker_b)
        await on_a.send(json.dumps({"type": "room.create", "name": "Across"}))
        room_id = (await frames_until(on_a, "room.created"))[-1]["room"]["id"]
        await on_a.send(json.dumps({"type": "room.join", "roomId": room_id}))
        await frames_until(on_a, "messages")
        model_server.enqueue(ScriptedReply(tool_calls=[("rename_room", '{"name": "Renamed across"}')]),
                             ScriptedReply(tokens=["Renamed."]))
        await on_a.send(json.dumps({"type": "chat.send", "requestId": "r1", "text": "rename it"}))
        frames = await frames_until(on_a, "message.updated")
        call_id = next(f["chunk"]["toolCallId"] for f in frames
                       if f["type"] == "stream.chunk" and f["chunk"]["type"] == "tool-approval-request")
        # Worker B takes the approval; the stream runs on worker A.
        await on_b.send(json.dumps({"type": "tool.approval", "requestId": "r1", "toolCallId": call_id,
                                    "approved": True, "ref": "a"}))
        assert (await frames_until(on_b, "ack"))[-1]["ref"] == "a"
        done = (await frames_until(on_a, "stream.done"))[-1]
        assert done["status"] == "complete" and done["message"]["content"] == "Renamed."
        rooms = (await frames_until(on_b, "rooms"))[-1]["rooms"]
        while rooms[0]["name"] != "Renamed across":
            rooms = (await frames_until(on_b, "rooms"))[-1]["rooms"]
        await on_a.close()
        await on_b.close()
    finally:
        worker_a.stop()
        worker_b.stop()
