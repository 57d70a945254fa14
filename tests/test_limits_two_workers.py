"""The per-user limits hold across two daphne workers that share Redis (their cache) and the database:
sockets, rooms an hour, chat frames a minute and live answers, each counted once for both workers."""
from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets
from channels.db import database_sync_to_async

from chatrooms.scripted_model_server import ScriptedReply
from tests.factories import make_user
from tests.servers import DaphneWorker, scripted_worker_env
from tests.test_end_to_end import frames_until, log_in
from tests.test_two_workers import redis_url  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def flush_redis(url: str) -> None:
    """Counters of earlier tests (user ids repeat after a flush of the database) must not count here."""
    import redis

    redis.Redis.from_url(url).flushdb()


async def open_socket(worker: DaphneWorker, cookie: str):
    ws = await websockets.connect(worker.ws_url, additional_headers={"Cookie": cookie, "Origin": worker.http_url})
    await frames_until(ws, "rooms")
    return ws


async def try_to_open(worker: DaphneWorker, cookie: str):
    """A socket past `hello` and `rooms`, or None if the server accepted it and closed it with 4429."""
    ws = await websockets.connect(worker.ws_url, additional_headers={"Cookie": cookie, "Origin": worker.http_url})
    try:
        await frames_until(ws, "rooms")
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 4429, closed
        return None
    return ws


async def answer_of(ws, request: dict) -> list[dict]:
    """Frames up to the answer to a chat frame: its `stream.done`, or an `error` for it."""
    await ws.send(json.dumps(request))
    frames = []
    while not frames or not (frames[-1]["type"] == "error" or (
            frames[-1]["type"] == "stream.done" and frames[-1]["requestId"] == request["requestId"])):
        frames.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
    return frames


async def wait_for_a_fresh_minute_if_this_one_ends_soon() -> None:
    """The chat limit counts per minute of the clock: the attempts below must fall in one minute."""
    left = 60 - time.time() % 60
    if left < 20:
        await asyncio.sleep(left + 0.1)  # a deadline on the wall clock, not a condition to poll


async def test_every_limit_holds_across_two_workers(model_server, redis_url):  # noqa: F811
    flush_redis(redis_url)
    model_server.reset()
    await database_sync_to_async(make_user)("sam", "a-long-enough-password")
    env = scripted_worker_env(model_server, REDIS_URL=redis_url, SOCKETS_PER_USER="3", ROOMS_PER_HOUR="2",
                              RATE_CHAT_PER_MINUTE="4", STREAMS_PER_USER="1")
    worker_a, worker_b = DaphneWorker(env).start(), DaphneWorker(env).start()
    sockets = []
    try:
        cookie = await database_sync_to_async(log_in)(worker_a.http_url, "sam", "a-long-enough-password")

        # Sockets: three in all, whichever worker holds them; closing one frees a place on the other.
        for worker in (worker_a, worker_b, worker_a):
            sockets.append(await open_socket(worker, cookie))
        on_a, on_b, on_a_again = sockets
        assert await try_to_open(worker_b, cookie) is None
        assert await try_to_open(worker_a, cookie) is None
        await on_a_again.close()
        for _attempt in range(100):  # worker A releases the count once it has seen the close
            freed = await try_to_open(worker_b, cookie)
            if freed is not None:
                sockets.append(freed)
                break
            await asyncio.sleep(0.05)  # polling another process's state, which has no event to wait on
        else:
            pytest.fail("closing a socket on worker A never freed a place on worker B")
        assert await try_to_open(worker_a, cookie) is None

        # Rooms an hour: two, one on each worker; the third is refused wherever it is asked for.
        rooms = []
        for ws in (on_a, on_b):
            await ws.send(json.dumps({"type": "room.create", "name": "Limited"}))
            rooms.append((await frames_until(ws, "room.created"))[-1]["room"]["id"])
        await on_a.send(json.dumps({"type": "room.create", "name": "One too many", "ref": "third"}))
        refused = (await frames_until(on_a, "error"))[-1]
        assert (refused["code"], refused["ref"]) == ("rate_limited", "third") and refused["retryAfter"] > 0

        # Live answers: one at a time for sam, on both workers; chat frames: four a minute on both.
        await wait_for_a_fresh_minute_if_this_one_ends_soon()
        model_server.enqueue(ScriptedReply(tokens=["held"], hold_open=True))
        await on_a.send(json.dumps({"type": "chat.send", "roomId": rooms[0], "requestId": "r1", "text": "hold"}))
        while (await frames_until(on_a, "stream.chunk"))[-1]["chunk"]["type"] != "text-delta":
            pass  # the model has answered: the held reply is taken, and later requests get echoes
        busy = (await answer_of(on_b, {"type": "chat.send", "roomId": rooms[1], "requestId": "r2", "text": "no"}))[-1]
        assert busy["code"] == "rate_limited" and "answers streaming already" in busy["message"]
        await on_a.send(json.dumps({"type": "chat.cancel", "requestId": "r1"}))
        assert (await frames_until(on_a, "stream.done"))[-1]["status"] == "aborted"
        assert model_server.client_disconnected.wait(5)
        third = (await answer_of(on_b, {"type": "chat.send", "roomId": rooms[1], "requestId": "r3", "text": "now"}))[-1]
        assert third.get("status") == "complete", third
        fourth = (await answer_of(on_a, {"type": "chat.send", "roomId": rooms[0], "requestId": "r4", "text": "me"}))[-1]
        assert fourth.get("status") == "complete", fourth
        fifth = (await answer_of(on_b, {"type": "chat.send", "roomId": rooms[1], "requestId": "r5", "text": "5th"}))[-1]
        assert fifth["type"] == "error" and fifth["code"] == "rate_limited"
        assert "at most 4 a minute" in fifth["message"] and 0 < fifth["retryAfter"] <= 60
    finally:
        for ws in sockets:
            await ws.close()
        worker_a.stop()
        worker_b.stop()
        print(worker_a.output(), worker_b.output())  # shown by pytest when the test fails

