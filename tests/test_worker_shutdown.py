"""A worker that stops mid-answer: SIGTERM finishes its streams; after SIGKILL, another worker does."""
from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
import websockets
from channels.db import database_sync_to_async

from chatrooms.models import Message
from chatrooms.scripted_model_server import ScriptedReply
from streaming.models import Stream, StreamChunk
from tests.factories import make_user
from tests.servers import DaphneWorker, scripted_worker_env
from tests.test_end_to_end import frames_until, log_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]
TOKENS = [f"tok{i} " for i in range(12)]


async def start_answer(worker: DaphneWorker, model_server) -> tuple[object, str, str]:
    """Log in, create a room, and have a never-ending answer stream all of TOKENS."""
    cookie = await database_sync_to_async(log_in)(worker.http_url, "sam", "a-long-enough-password")
    ws = await websockets.connect(worker.ws_url, additional_headers={"Cookie": cookie, "Origin": worker.http_url})
    await frames_until(ws, "rooms")
    await ws.send(json.dumps({"type": "room.create", "name": "R"}))
    room_id = (await frames_until(ws, "room.created"))[-1]["room"]["id"]
    model_server.enqueue(ScriptedReply(tokens=TOKENS, hold_open=True))
    await ws.send(json.dumps({"type": "chat.send", "roomId": room_id, "requestId": "r", "text": "go"}))
    shown, last_index = "", -1
    while shown != "".join(TOKENS):
        frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if frame["type"] == "stream.chunk":
            last_index = frame["index"]
            if frame["chunk"]["type"] == "text-delta":
                shown += frame["chunk"]["delta"]
    return ws, room_id, shown, last_index


async def wait_for_chunks_stored(stream_id: str | None, count: int, timeout: float = 60) -> None:
    chunks = StreamChunk.objects.filter(stream_id=stream_id) if stream_id else StreamChunk.objects.all()
    deadline = time.monotonic() + timeout
    while await database_sync_to_async(chunks.count)() < count:
        assert time.monotonic() < deadline, f"fewer than {count} chunks stored after {timeout} s"
        await asyncio.sleep(0.05)  # the recorder's flush timer has no event a test can wait on


async def test_sigterm_finishes_live_answers_as_interrupted(model_server):
    model_server.reset()
    await database_sync_to_async(make_user)("sam", "a-long-enough-password")
    worker = DaphneWorker(scripted_worker_env(model_server)).start()
    try:
        ws, room_id, shown, _last_index = await start_answer(worker, model_server)
        stopped = await asyncio.to_thread(worker.stop, signal.SIGTERM)
        assert stopped is not None
        message = await database_sync_to_async(Message.objects.get)(role="assistant")
        assert message.status == "interrupted" and message.content == shown
        assert await database_sync_to_async(Stream.objects.filter(status="interrupted").count)() == 1
        assert model_server.client_disconnected.wait(2)
        await ws.close()
    finally:
        worker.stop(signal.SIGKILL)


async def test_after_sigkill_another_worker_finishes_the_stream_on_join(model_server):
    model_server.reset()
    await database_sync_to_async(make_user)("sam", "a-long-enough-password")
    doomed = DaphneWorker(scripted_worker_env(model_server)).start()
    ws, room_id, shown, last_index = await start_answer(doomed, model_server)
    await wait_for_chunks_stored(None, last_index + 1)
    doomed.stop(signal.SIGKILL)
    stored = await database_sync_to_async(StreamChunk.objects.count)()

    survivor = DaphneWorker(scripted_worker_env(model_server, STREAM_STALE_SECONDS="1")).start()
    try:
        await asyncio.sleep(1.2)  # let the dead worker's heartbeat age past STREAM_STALE_SECONDS
        cookie = await database_sync_to_async(log_in)(survivor.http_url, "sam", "a-long-enough-password")
        async with websockets.connect(survivor.ws_url,
                                      additional_headers={"Cookie": cookie, "Origin": survivor.http_url}) as ws2:
            await frames_until(ws2, "rooms")
            await ws2.send(json.dumps({"type": "room.join", "roomId": room_id}))
            messages = (await frames_until(ws2, "messages"))[-1]["messages"]
        answer = messages[-1]
        assert answer["status"] == "interrupted"
        assert answer["content"] == shown, "every chunk the client was shown had been flushed"
        assert await database_sync_to_async(StreamChunk.objects.count)() == stored
    finally:
        survivor.stop()
