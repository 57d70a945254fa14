"""Batched chunk writes: chunks are buffered per stream and stored by count and by time, the streams
of a process together, never per chunk."""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DataError, IntegrityError, transaction
from django.utils import timezone

from .models import Stream, StreamChunk

logger = logging.getLogger(__name__)

# Fields that a truncated chunk keeps a prefix of, so that what was stored still reads sensibly.
TRUNCATABLE_FIELDS = ("delta", "inputTextDelta", "errorText")
# Consecutive failed writes of one batch before the stream gives up with an explicit error.
MAX_FLUSH_ATTEMPTS = 20


class StreamStorageError(Exception):
    """The database could not keep up and the bounded buffer overflowed."""


def fit_chunk_body(chunk: dict[str, Any], body: str, max_bytes: int) -> str:
    """The body to store: unchanged when it fits, else a truncated copy with a `truncated` marker."""
    size = len(body.encode())
    if size <= max_bytes:
        return body
    kept: dict[str, Any] = {
        key: value
        for key, value in chunk.items()
        if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 200)
    }
    for field in TRUNCATABLE_FIELDS:
        if isinstance(chunk.get(field), str):
            kept[field] = chunk[field][: max(max_bytes // 8, 1)]
    kept.update(truncated=True, originalBytes=size)
    return json.dumps(kept)


def store_batches(batches: list[tuple[Any, list[StreamChunk]]]) -> set[uuid.UUID]:
    """Insert the chunks of many streams in one transaction, one SELECT and one INSERT whatever their
    number; the ids of the streams that may go on (neither cancelled nor finished elsewhere). Only a
    live stream takes chunks: once a stream has ended (finished by a sweep, deleted with its room) its
    message and `lastIndex` are final, and later chunks are dropped. Heartbeats are not beaten here:
    each stream beats its own, seldom."""
    ids = [as_uuid(stream_id) for stream_id, _ in batches]
    with transaction.atomic():
        # The rows stay locked (PostgreSQL) until the chunks are in: a sweep finishing one of these
        # streams waits for them, then reads them; one that finished first is seen as ended here.
        states = (Stream.objects.select_for_update(no_key=True).filter(pk__in=ids).order_by("pk")
                  .values_list("pk", "status", "cancel_requested"))
        live: set[uuid.UUID] = set()
        wanted: set[uuid.UUID] = set()
        for pk, status, cancel_requested in states:
            if status == Stream.Status.STREAMING:
                live.add(pk)
                if not cancel_requested:
                    wanted.add(pk)
        StreamChunk.objects.bulk_create(
            [chunk for (stream_id, batch), pk in zip(batches, ids, strict=True) if pk in live for chunk in batch]
        )
    return wanted


def as_uuid(stream_id: Any) -> uuid.UUID:
    return stream_id if isinstance(stream_id, uuid.UUID) else uuid.UUID(str(stream_id))


def stream_still_wanted(stream_id: uuid.UUID) -> bool:
    """Beat the heartbeat of a live stream; True if it may go on (not cancelled, not finished elsewhere).

    A cancelled stream is beaten too, while its worker stops it: a beat says the worker is alive, and a
    cancel whose stream stops beating is finished by whoever cancelled it (its worker is gone)."""
    with transaction.atomic():
        beaten = Stream.objects.filter(pk=stream_id, status=Stream.Status.STREAMING).update(heartbeat_at=timezone.now())
        return bool(beaten) and not Stream.objects.filter(pk=stream_id, cancel_requested=True).exists()


class StreamRecorder:
    """One stream's chunks on their way to the database: buffered, and stored by the process's
    ChunkWriter once STREAM_FLUSH_CHUNKS are waiting or the oldest has waited STREAM_FLUSH_MS,
    whichever comes first, and always at close."""

    def __init__(
        self,
        stream_id: uuid.UUID,
        *,
        on_stop_requested: Callable[[], None] | None = None,
        flush_chunks: int | None = None,
        flush_ms: int | None = None,
        max_buffer: int | None = None,
        max_chunk_bytes: int | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.on_stop_requested = on_stop_requested
        self.flush_chunks = max(1, flush_chunks or settings.STREAM_FLUSH_CHUNKS)
        self.flush_seconds = (flush_ms if flush_ms is not None else settings.STREAM_FLUSH_MS) / 1000
        self.max_buffer = max_buffer or settings.STREAM_BUFFER_MAX_CHUNKS
        self.max_chunk_bytes = max_chunk_bytes or settings.STREAM_CHUNK_MAX_BYTES
        self.stored_through = -1  # highest index known to be in the database
        self.flush_count = 0
        self._pending: list[StreamChunk] = []
        self._in_flight: list[StreamChunk] = []  # taken by the write under way
        self._due: float | None = None  # loop time by which the oldest pending chunk should be stored
        self._urgent = False  # store at the next write, not when due
        self._retry_at = 0.0
        self._failures = 0
        self._failure: BaseException | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._writer = ChunkWriter.for_running_loop()

    @property
    def failed(self) -> bool:
        return self._failure is not None

    @property
    def unstored(self) -> int:
        """Chunks added and not yet known to be stored."""
        return len(self._pending) + len(self._in_flight)

    def add(self, index: int, chunk: dict[str, Any], body: str) -> None:
        """Buffer one chunk; never waits. Call `wait_for_room` after it to respect the bound."""
        self._raise_if_failed()
        self._pending.append(
            StreamChunk(stream_id=self.stream_id, index=index, body=fit_chunk_body(chunk, body, self.max_chunk_bytes))
        )
        if self._due is None:
            self._due = self._writer.loop.time() + self.flush_seconds
        if len(self._pending) >= self.flush_chunks:
            self._urgent = True
        self._writer.schedule(self)

    async def wait_for_room(self) -> None:
        """Backpressure: while the buffer is over its bound, wait for the database to catch up.
        Raises once storing has failed for good."""
        while not self._failure and len(self._pending) >= self.max_buffer:
            await self._one_write()
        self._raise_if_failed()

    async def close(self) -> None:
        """Store everything still buffered; raises if storing failed."""
        await self.flush()

    async def flush(self) -> None:
        """Store everything buffered now, without waiting for the count or the timer; raises if
        storing failed. A stream about to wait for a person calls it, so that a replay shows why."""
        while not self._failure and (self._pending or self._in_flight):
            await self._one_write()
        self._raise_if_failed()

    async def _one_write(self) -> None:
        """Wait for the next write that takes this stream's chunks (or for the one under way)."""
        delay = self._retry_at - self._writer.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._failure or not (self._pending or self._in_flight):
            return
        written = self._writer.loop.create_future()
        self._waiters.append(written)
        if self._pending:
            self._urgent = True
            self._writer.schedule(self)
        await written

    def _raise_if_failed(self) -> None:
        if self._failure:
            raise StreamStorageError("storing the stream failed") from self._failure

    # -- called by the writer --------------------------------------------------------------------

    def _take_batch(self) -> list[StreamChunk]:
        self._in_flight, self._pending = self._pending, []
        self._due, self._urgent = None, False
        return self._in_flight

    def _written(self, still_wanted: bool) -> None:
        self.flush_count += 1
        self.stored_through = self._in_flight[-1].index
        self._in_flight, self._failures = [], 0
        self._wake_waiters()
        if not still_wanted and self.on_stop_requested:
            self.on_stop_requested()

    def _write_failed(self, error: BaseException) -> None:
        """Keep the batch for the next attempt, after a growing pause; give up at the bound."""
        self._failures += 1
        logger.warning("storing %d chunks of stream %s failed: %s", len(self._in_flight), self.stream_id, error)
        self._pending[:0] = self._in_flight
        self._in_flight = []
        if len(self._pending) >= self.max_buffer or self._failures >= MAX_FLUSH_ATTEMPTS:
            self._failure = error
        else:
            now = self._writer.loop.time()
            self._retry_at = now + self.flush_seconds * self._failures
            self._due = now
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _ready_at(self) -> float | None:
        """When this stream's pending chunks should be written, or None for never (nothing pending,
        or storing failed for good)."""
        if not self._pending or self._failure:
            return None
        return max(self._retry_at, 0.0 if self._urgent else self._due or 0.0)


class ChunkWriter:
    """Stores the pending chunks of every stream of one event loop (one worker process) together:
    one transaction per write, one SELECT and one INSERT whatever the number of streams. A write
    starts when some stream's chunks are due (by count, by time, or because it flushes) and takes
    every stream's pending chunks with it."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ChunkWriter] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # a strong one would keep the loop, the key, alive for ever
        self.write_count = 0
        self._recorders: dict[StreamRecorder, None] = {}  # an ordered set: those with chunks to store
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._store = database_sync_to_async(store_batches, thread_sensitive=False)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        assert loop is not None, "a writer is used only from its own running loop"
        return loop

    @classmethod
    def for_running_loop(cls) -> ChunkWriter:
        loop = asyncio.get_running_loop()
        writer = cls._by_loop.get(loop)
        if writer is None:
            writer = cls._by_loop[loop] = cls(loop)
        return writer

    def schedule(self, recorder: StreamRecorder) -> None:
        """A stream has chunks to store: only its own time is looked at, so adding a chunk costs the
        same however many streams the process has."""
        self._recorders[recorder] = None
        ready_at = recorder._ready_at()
        if self._task is None and ready_at is not None:  # a write under way looks again when it ends
            self._arm(ready_at)

    def _wake(self) -> None:
        """After a timer or a write: look at every stream."""
        if self._task is not None:
            return
        ready_at = self._next_ready_at()
        if ready_at is None:
            self._cancel_timer()
        else:
            self._arm(ready_at)

    def _arm(self, ready_at: float) -> None:
        """Write now if `ready_at` has come, else make sure the timer goes off by then."""
        if ready_at <= self.loop.time():
            self._cancel_timer()
            self._task = self.loop.create_task(self._write_while_due(), name="chunk-writer")
        elif self._timer is None or self._timer.when() > ready_at:
            self._cancel_timer()
            self._timer = self.loop.call_at(ready_at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._wake()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _next_ready_at(self) -> float | None:
        for recorder in [r for r in self._recorders if r._ready_at() is None and not r._in_flight]:
            del self._recorders[recorder]
        times = [t for t in (r._ready_at() for r in self._recorders) if t is not None]
        return min(times) if times else None

    async def _write_while_due(self) -> None:
        try:
            while True:
                ready_at = self._next_ready_at()
                now = self.loop.time()
                if ready_at is None or ready_at > now:
                    return
                taken = [r for r in self._recorders if r._ready_at() is not None and r._retry_at <= now]
                await self._write(taken, [r._take_batch() for r in taken])
        finally:
            self._task = None
            self._wake()

    async def _write(self, recorders: list[StreamRecorder], batches: list[list[StreamChunk]]) -> None:
        self.write_count += 1
        try:
            wanted = await self._store([(r.stream_id, batch) for r, batch in zip(recorders, batches, strict=True)])
        except (IntegrityError, DataError) as error:
            if len(recorders) == 1:
                recorders[0]._write_failed(error)
                return
            # One stream's rows may be what the database refused: each alone, so the others go on.
            for recorder, batch in zip(recorders, batches, strict=True):
                await self._write([recorder], [batch])
        except Exception as error:  # the database as a whole: every stream retries after a pause
            for recorder in recorders:
                recorder._write_failed(error)
        else:
            for recorder in recorders:
                recorder._written(as_uuid(recorder.stream_id) in wanted)
