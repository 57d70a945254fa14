"""Fault 9: a watcher's worker stalled (SIGSTOP) past the channel layer's expiry, then resumed: it resyncs.

With Redis (channels-redis's pub/sub layer) there is no group expiry: what drops a stalled subscriber is
Redis itself, which disconnects a pub/sub client whose output buffer passes `client-output-buffer-limit
pubsub` (default 32 MB hard, 8 MB for 60 s); whatever is published until it subscribes again is lost.
When that happens depends on the kernel's socket buffers, so the test does what Redis would do, at a
known moment: while the watcher's worker is stopped, it closes that worker's pub/sub connections
(CLIENT KILL), and the answer goes on and ends before the worker runs again.

The in-memory layer (one process, no REDIS_URL) does expire: a membership older than its group_expiry
(CHANNEL_GROUP_EXPIRY_SECONDS) goes, and so does every membership of a channel one of whose messages
waited past the message expiry (60 s). The last test shortens the first and checks that a connection
that sat in a room longer than that still gets the next answer live."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import redis
from channels.db import database_sync_to_async

from chatrooms.scripted_model_server import ScriptedReply

from tests.chatrooms.test_chat_flow import text_of
from tests.factories import make_room, make_user

from .harness import Watcher, check_stream, wait_until_finished


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of a process's sockets (Linux /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}") if os.path.exists(f"/proc/{pid}/fd/{fd}") else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def cut_subscribers(admin: redis.Redis, pid: int) -> int:
    """Close, as Redis does when a subscriber's output buffer overflows, the pub/sub connections of one
    process; returns how many."""
    ports = local_ports(pid)
    cut = 0
    for client in admin.client_list():
        if int(client.get("sub", 0)) > 0 and int(client["addr"].rsplit(":", 1)[1]) in ports:
            admin.client_kill_filter(_id=client["id"])
            cut += 1
    return cut


async def test_watcher_stalled_past_the_layers_expiry_resyncs(cluster, sam):
    worker_a = cluster.start_worker()
    worker_b = cluster.start_worker()
    on_a, on_b = await Watcher.log_in(worker_a, name="on A"), await Watcher.log_in(worker_b, name="stalled, on B")
    room = await on_a.create_room("Stalled")
    await on_a.join(room)
    await on_b.join(room)
    admin = redis.Redis(port=cluster.redis.port)

    tokens = [f"s{i} " for i in range(150)]
    cluster.model_server.enqueue(ScriptedReply(tokens=tokens, delay=0.02))
    await on_a.send({"type": "chat.send", "roomId": room, "requestId": "stalled", "text": "go"})
    await on_b.until_text(None, "s2 ")
    stream_id = next(iter(on_b.shown))

    worker_b.process.send_signal(signal.SIGSTOP)
    try:
        # Redis drops B's subscriber; the rest of the answer streams and ends while B is stopped.
        assert cut_subscribers(admin, worker_b.process.pid) >= 1
        await on_a.until("stream.done", streamId=stream_id)
        await wait_until_finished(stream_id)
        assert max(on_b.shown[stream_id]) < 100, "B was not stopped mid-stream"
    finally:
        worker_b.process.send_signal(signal.SIGCONT)
    resumed = time.monotonic()

    # B's watcher notices (its quiet-stream watchdog), re-subscribes, takes what it missed from the
    # database and is told the end once.
    await on_b.until("stream.done", streamId=stream_id)
    resynced_after = time.monotonic() - resumed
    print(f"fault 9: the stalled watcher had the whole answer {resynced_after:.2f} s after SIGCONT")
    text = await check_stream(stream_id, [on_a, on_b], status="complete")
    assert text == "".join(tokens)
    assert resynced_after < 20

    # The next stream reaches B live: only the room's group delivers a stream B does not track yet.
    cluster.model_server.enqueue(ScriptedReply(tokens=[f"n{i} " for i in range(20)], delay=0.05))
    await on_a.send({"type": "chat.send", "roomId": room, "requestId": "next", "text": "again"})
    started = (await on_b.until("stream.start", requestId="next"))[-1]
    done = (await on_b.until("stream.done", requestId="next"))[-1]
    assert done["status"] == "complete"
    await check_stream(started["streamId"], [on_a, on_b], status="complete")
    assert on_b.text(started["streamId"]) == "".join(f"n{i} " for i in range(20))
    for watcher in (on_a, on_b):
        await watcher.close()


async def test_in_memory_group_expiry_does_not_cut_a_connection_off(scripted_model, connect, settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "streaming.layers.OneProcessChannelLayer",
                                           "CONFIG": {"group_expiry": 2}}}
    user = await database_sync_to_async(make_user)()
    room = await database_sync_to_async(make_room)(user)
    watcher, sender = await connect(user), await connect(user)
    await watcher.send({"type": "room.join", "roomId": str(room.pk)})
    await watcher.receive_until("messages")
    await asyncio.sleep(4)  # the fault: two expiry periods in the room (an expiry has no event to wait on)

    tokens = [f"e{i} " for i in range(10)]
    scripted_model.enqueue(ScriptedReply(tokens=tokens, delay=0.01))
    await sender.send({"type": "chat.send", "roomId": str(room.pk), "requestId": "q", "text": "go"})
    frames = await watcher.receive_until("stream.done", timeout=30)
    assert [f["type"] for f in frames].count("stream.start") == 1
    assert text_of(frames) == "".join(tokens) == frames[-1]["message"]["content"]
