"""Fault 8: connection churn on two workers (closed at once, mid-join, mid-replay) while others watch a stream."""
from __future__ import annotations

import asyncio
import itertools
import time


from chatrooms.scripted_model_server import ScriptedReply

from .clients import greeted, healthz, open_socket, read_frame, redis_subscriptions, rss_kib
from .harness import Watcher, check_stream

CYCLES = 200
AT_ONCE = 4  # churning clients at a time
SOCKETS_PER_USER = 20  # the default


async def churn_once(worker, cookie: str, room: str, variant: str, abort: bool) -> str:
    """One connect-and-leave; returns how the socket was greeted ('hello' or a close code)."""
    socket = await open_socket(worker, cookie, max_queue=None)  # a close drains what the server sent
    try:
        if variant == "before hello":
            return "hello"  # left before reading anything
        greeting = await greeted(socket)
        if greeting != "hello":
            return greeting
        await socket.send('{"type": "room.join", "roomId": "%s"}' % room)
        if variant == "mid-join":
            return greeting  # left before its `messages`
        seen = []
        while not seen or seen[-1] != "stream.resuming":
            try:
                seen.append((await read_frame(socket))["type"])
            except TimeoutError:
                raise AssertionError(f"no stream.resuming after {seen}") from None
        for _ in range(3):  # mid-replay: a few replayed chunks, then gone
            assert (await read_frame(socket))["type"] == "stream.chunk"
        return greeting
    finally:
        if abort:
            socket.transport.abort()
        else:
            await socket.close()


async def settled(probe, wanted, timeout: float = 15.0):
    """The value of `probe()` once it equals `wanted` (a worker notices closed sockets by itself, with no
    event a test can wait on: this polls), or its last value after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(probe)
        if value == wanted or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


async def test_churning_connections_leave_the_watchers_the_streams_and_the_counters_intact(cluster, sam):
    workers = [cluster.start_worker(), cluster.start_worker()]
    watchers = [await Watcher.log_in(w, name=f"watcher {n}") for n, w in enumerate(workers)]
    room = await watchers[0].create_room("Churned")
    for watcher in watchers:
        await watcher.join(room)
    baseline = await asyncio.to_thread(redis_subscriptions, cluster.redis.url)
    rss_before = [rss_kib(w) for w in workers]

    tokens = [f"c{i} " for i in range(1500)]
    reply = ScriptedReply(tokens=tokens, delay=0.002, hold_open=True)
    cluster.model_server.enqueue(reply)
    await watchers[0].send({"type": "chat.send", "roomId": room, "requestId": "churned", "text": "go"})
    await watchers[1].until_text(None, "c20 ")
    stream_id = next(iter(watchers[1].shown))

    async def keep_watching(watcher: Watcher) -> None:
        await watcher.until("stream.done", streamId=stream_id)

    watching = [asyncio.ensure_future(keep_watching(w)) for w in watchers]
    variants = itertools.cycle(["before hello", "mid-join", "mid-replay", "mid-replay"])
    plan = [(workers[n % 2], next(variants), n % 3 == 0) for n in range(CYCLES)]
    greetings: list[str] = []
    started = time.monotonic()

    async def churner(share: list) -> None:
        for worker, variant, abort in share:
            greetings.append(await churn_once(worker, watchers[0].cookie, room, variant, abort))

    await asyncio.gather(*(churner(plan[i::AT_ONCE]) for i in range(AT_ONCE)))
    churn_seconds = time.monotonic() - started
    assert greetings.count("hello") == CYCLES, {g: greetings.count(g) for g in set(greetings)}

    reply.hold_open = False
    await asyncio.wait_for(asyncio.gather(*watching), 60)
    text = await check_stream(stream_id, watchers, status="complete")
    assert text == "".join(tokens)

    # The workers are healthy and hold nothing of the churned sockets: no channel, no group membership ...
    for worker in workers:
        status, body = await healthz(worker)
        assert status == 200, body
    rss_after = [rss_kib(w) for w in workers]

    # ... and no socket count: the user can open exactly SOCKETS_PER_USER sockets again.
    sockets = await asyncio.gather(*(open_socket(workers[n % 2], watchers[0].cookie)
                                     for n in range(SOCKETS_PER_USER - len(watchers))))
    assert await asyncio.gather(*(greeted(s) for s in sockets)) == ["hello"] * len(sockets)
    one_more = await open_socket(workers[0], watchers[0].cookie)
    assert await greeted(one_more) == "4429"
    for socket in sockets:
        await socket.close()

    left = await settled(lambda: redis_subscriptions(cluster.redis.url), baseline)
    assert left == baseline, f"subscriptions left behind: {set(left.items()) ^ set(baseline.items())}"

    # The churn did not disturb a new answer in the room either.
    await watchers[1].send({"type": "chat.send", "roomId": room, "requestId": "after", "text": "still fine"})
    done = (await watchers[0].until("stream.done"))[-1]
    assert done["status"] == "complete" and done["message"]["content"] == "Echo: still fine"
    print(f"churn: {CYCLES} cycles in {churn_seconds:.1f} s; RSS KiB before {rss_before}, after {rss_after}")
    for watcher in watchers:
        await watcher.close()
