"""Fault 3: the database locked for 5 s by another connection while rooms stream; the live relay goes on."""
from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import statistics
import threading
import time
from collections.abc import AsyncIterator

from channels.db import database_sync_to_async
from django.db import OperationalError, connection, connections

from chatrooms.models import Room
from chatrooms.scripted_model_server import ScriptedReply

from .harness import Watcher, check_stream, wait_until_finished

LOCK_SECONDS = 5.0
# The lock outlasts the test cluster's STREAM_STALE_SECONDS (5): a stream whose heartbeat waits on the
# lock would be taken for dead. These workers use a production-like ratio (heartbeat 1 s, stale 20 s).
STALE_SECONDS = "20"
# How soon after the lock's end a frame that waited for it must be answered.
AFTER_LOCK_BOUND = 10.0


@contextlib.asynccontextmanager
async def database_locked() -> AsyncIterator[None]:
    """Another connection holds the write lock (SQLite: BEGIN EXCLUSIVE, which in WAL mode blocks
    writers, not readers; PostgreSQL: ACCESS EXCLUSIVE on the stream tables, which blocks reads of
    them too) until the block ends. The connection lives on a thread of its own."""
    acquired, release = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def hold() -> None:
        try:
            if connection.vendor == "sqlite":
                db = sqlite3.connect(connection.settings_dict["NAME"], timeout=30, isolation_level=None)
                db.execute("BEGIN EXCLUSIVE")
                acquired.set()
                release.wait()
                db.execute("ROLLBACK")
                db.close()
            else:
                db = connections.create_connection("default")
                db.set_autocommit(False)
                # The tables are locked one after the other: a worker's transaction that holds a lock on
                # one and wants the other makes PostgreSQL end one side as a deadlock. When that side is
                # this lock, take it again (the worker's side retries on its own).
                for attempt in range(5):
                    try:
                        with db.cursor() as cursor:
                            cursor.execute("LOCK TABLE streaming_stream, streaming_streamchunk IN ACCESS EXCLUSIVE MODE")
                        break
                    except OperationalError as error:
                        db.rollback()
                        if "deadlock detected" not in str(error) or attempt == 4:
                            raise
                acquired.set()
                release.wait()
                db.rollback()
                db.close()
        except BaseException as error:  # surfaced in the test below
            failure.append(error)
            acquired.set()

    holder = threading.Thread(target=hold, name="database-lock")
    holder.start()
    await asyncio.to_thread(acquired.wait)
    assert not failure, failure
    try:
        yield
    finally:
        release.set()
        await asyncio.to_thread(holder.join)


class Timed:
    """Reads a watcher's frames in the background and notes when each text chunk of a stream arrived."""

    def __init__(self, watcher: Watcher, until_request: str) -> None:
        self.watcher = watcher
        self.arrivals: list[float] = []
        self.task = asyncio.get_running_loop().create_task(self._read(until_request))

    async def _read(self, request_id: str) -> None:
        while True:
            frame = await self.watcher.recv()
            if frame["type"] == "stream.chunk" and frame["chunk"]["type"] == "text-delta":
                self.arrivals.append(time.monotonic())
            if frame["type"] == "stream.done" and frame["requestId"] == request_id:
                return

    def gaps(self, start: float, end: float) -> list[float]:
        inside = [t for t in self.arrivals if start <= t <= end]
        return [b - a for a, b in zip(inside, inside[1:])]


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


async def test_database_locked_while_rooms_stream(cluster, sam):
    worker = cluster.start_worker(STREAM_STALE_SECONDS=STALE_SECONDS)
    paced, locked = await Watcher.log_in(worker, name="paced room"), await Watcher.log_in(worker, name="locked room")
    other = await Watcher.log_in(worker, name="renames during the lock")
    joiner = await Watcher.log_in(worker, name="joins during the lock")
    paced_room, locked_room = await paced.create_room("Paced"), await locked.create_room("Locked")
    await paced.join(paced_room)
    await locked.join(locked_room)

    # The paced room streams a token every 40 ms for ~13 s: before, during and after the lock.
    paced_tokens = [f"p{i} " for i in range(320)]
    cluster.model_server.enqueue(ScriptedReply(tokens=paced_tokens, delay=0.04))
    await paced.send({"type": "chat.send", "roomId": paced_room, "requestId": "paced", "text": "go"})
    await paced.until_text(None, "p5 ")
    # The other room's answer ends while the database is locked: its final write waits for the lock.
    locked_tokens = [f"l{i} " for i in range(100)]
    cluster.model_server.enqueue(ScriptedReply(tokens=locked_tokens, delay=0.04))
    await locked.send({"type": "chat.send", "roomId": locked_room, "requestId": "locked", "text": "go"})
    await locked.until_text(None, "l5 ")
    locked_stream = next(iter(locked.shown))

    timed_paced, timed_locked = Timed(paced, "paced"), Timed(locked, "locked")
    before = time.monotonic()
    await asyncio.sleep(2.5)  # the baseline window: a measurement period, not a synchronisation
    async with database_locked():
        lock_start = time.monotonic()
        # Socket frames that need the database meanwhile, on the same worker: a join of the locked room
        # (a read), then a rename (a write). One after the other: frames of a worker share one database
        # thread, so a read sent with a write that waits for the lock would wait behind it.
        loop = asyncio.get_running_loop()
        join = loop.create_task(_answered_at(joiner, {"type": "room.join", "roomId": locked_room}, "messages",
                                             roomId=locked_room))
        await asyncio.wait({join}, timeout=LOCK_SECONDS / 2)
        rename = loop.create_task(_answered_at(
            other, {"type": "room.rename", "roomId": paced_room, "name": "Renamed", "ref": "r"}, None, ref="r"))
        await asyncio.sleep(lock_start + LOCK_SECONDS - time.monotonic())  # the rest of the fault's length
        lock_end = time.monotonic()
    await asyncio.wait_for(timed_locked.task, 60)
    await asyncio.wait_for(timed_paced.task, 60)
    (joined, joined_at), (renamed, renamed_at) = await asyncio.wait_for(asyncio.gather(join, rename), 60)
    joined_after, rename_acked_after = joined_at - lock_start, renamed_at - lock_start

    # The live relay went on: the locked room's viewer got tokens while nothing could be stored.
    during = [t for t in timed_locked.arrivals if lock_start <= t <= lock_end]
    assert len(during) >= 20, f"only {len(during)} tokens reached the locked room's viewer during the lock"

    # The other room's per-token latency held: compare gaps between arrivals during the lock with the
    # baseline before it. Medians and p90 with an absolute floor (a 2-core machine shared with other
    # test runs jitters by tens of ms); a stalled relay would show a gap of about LOCK_SECONDS.
    base, lock = timed_paced.gaps(before, lock_start), timed_paced.gaps(lock_start, lock_end)
    figures = {"base median": statistics.median(base), "base p90": p90(base), "base max": max(base),
               "lock median": statistics.median(lock), "lock p90": p90(lock), "lock max": max(lock),
               "lock (s)": lock_end - lock_start, "join answered (s)": joined_after,
               "rename acked (s)": rename_acked_after}
    print("fault 3 figures:", {k: round(v, 3) for k, v in figures.items()})
    assert len(lock) >= 0.5 * LOCK_SECONDS / 0.04, f"the paced room got only {len(lock)} tokens during the lock"
    assert figures["lock median"] <= max(2 * figures["base median"], figures["base median"] + 0.05), figures
    assert figures["lock p90"] <= max(2 * figures["base p90"], figures["base p90"] + 0.15), figures
    assert figures["lock max"] < 1.5, figures

    # The frames that needed the database were answered, each as its lock allows, and the rename
    # waited instead of failing: on SQLite a reader is not blocked (WAL), so the join is answered while
    # the lock is held, and the rename waits for the lock and succeeds well within the 30 s busy
    # timeout; on PostgreSQL the lock covers the stream tables the join reads, so the join waits for
    # its end, and the rename waits behind it on the worker's database thread. The bounds are generous
    # (a shared 2-core machine): a join that waited for the write lock, or a rename refused as
    # "database is locked", fails them.
    assert joined["type"] == "messages" and renamed["type"] == "ack", (joined, renamed)
    assert renamed_at - lock_end < AFTER_LOCK_BOUND, figures
    if connection.vendor == "sqlite":
        assert joined_after < LOCK_SECONDS / 2, figures
        assert renamed_at > lock_end, figures
    else:
        assert lock_end < joined_at < lock_end + AFTER_LOCK_BOUND, figures
    assert await database_sync_to_async(Room.objects.values_list("name", flat=True).get)(pk=paced_room) == "Renamed"

    # Every chunk landed once, in order, afterwards, and both streams ended once, completely.
    for stream_id, watchers, tokens in ((locked_stream, [locked, joiner], locked_tokens),
                                        (next(iter(paced.shown)), [paced], paced_tokens)):
        await wait_until_finished(stream_id)
        assert await check_stream(stream_id, watchers, status="complete") == "".join(tokens)
    for watcher in (paced, locked, other, joiner):
        await watcher.close()


async def test_buffer_bound_under_a_locked_database(cluster, sam):
    """With a tiny STREAM_BUFFER_MAX_CHUNKS the recorder's bound is reached during the lock: the stream
    waits for the database (backpressure) instead of dropping chunks, and completes once it is free."""
    worker = cluster.start_worker(STREAM_STALE_SECONDS=STALE_SECONDS, STREAM_BUFFER_MAX_CHUNKS="8",
                                  STREAM_FLUSH_CHUNKS="4")
    viewer = await Watcher.log_in(worker, name="viewer")
    room = await viewer.create_room("Bounded")
    await viewer.join(room)
    tokens = [f"b{i} " for i in range(120)]
    cluster.model_server.enqueue(ScriptedReply(tokens=tokens, delay=0.02))
    await viewer.send({"type": "chat.send", "roomId": room, "requestId": "bounded", "text": "go"})
    await viewer.until_text(None, "b3 ")
    stream_id = next(iter(viewer.shown))
    async with database_locked():
        lock_start = time.monotonic()
        shown_at_lock = len(viewer.shown[stream_id])
        with contextlib.suppress(asyncio.TimeoutError):
            while True:
                await viewer.recv(timeout=LOCK_SECONDS - (time.monotonic() - lock_start))
        shown_during = len(viewer.shown[stream_id]) - shown_at_lock
    # Held back, not dropped: at most the bound (and the chunks in flight) went out unstored.
    assert shown_during <= 8 + 8 + 2, f"{shown_during} chunks went out while nothing could be stored"
    await viewer.until("stream.done", streamId=stream_id)
    await wait_until_finished(stream_id)
    assert await check_stream(stream_id, [viewer], status="complete") == "".join(tokens)
    await viewer.close()


async def _answered_at(watcher: Watcher, frame: dict[str, str], answer: str | None,
                       **match: str) -> tuple[dict[str, object], float]:
    """The first frame the watcher is sent, after `frame`, of type `answer` (any type when None) whose
    fields equal `match`, and when it arrived."""
    await watcher.send(frame)
    while True:
        reply = await watcher.recv()
        if (answer is None or reply["type"] == answer) and all(reply.get(k) == v for k, v in match.items()):
            return reply, time.monotonic()
