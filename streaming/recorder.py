"""Batched chunk writes: a stream's chunks are buffered and stored by count and by time, never per chunk."""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction
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


def store_batch(stream_id: uuid.UUID, batch: list[StreamChunk]) -> bool:
    """Insert a batch and beat the heartbeat in one transaction; False once the stream must stop
    (cancel requested from anywhere, or finished by someone else). A deleted stream stores nothing."""
    with transaction.atomic():
        wanted = stream_still_wanted(stream_id)
        if wanted or Stream.objects.filter(pk=stream_id).exists():
            StreamChunk.objects.bulk_create(batch)
        return wanted


def stream_still_wanted(stream_id: uuid.UUID) -> bool:
    """Beat the heartbeat unless the stream was cancelled or finished elsewhere; True if it may go on."""
    return bool(
        Stream.objects.filter(pk=stream_id, status=Stream.Status.STREAMING, cancel_requested=False).update(
            heartbeat_at=timezone.now()
        )
    )


class StreamRecorder:
    """Buffers chunks and flushes after STREAM_FLUSH_CHUNKS chunks or STREAM_FLUSH_MS milliseconds,
    whichever comes first, and always at close. Each flush is one insert and one heartbeat update."""

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
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._store = database_sync_to_async(store_batch, thread_sensitive=False)

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def add(self, index: int, chunk: dict[str, Any], body: str) -> None:
        """Buffer one chunk; never waits. Call `wait_for_room` after it to respect the bound."""
        if self._failure:
            raise StreamStorageError("storing the stream failed") from self._failure
        self._pending.append(
            StreamChunk(stream_id=self.stream_id, index=index, body=fit_chunk_body(chunk, body, self.max_chunk_bytes))
        )
        if len(self._pending) >= self.flush_chunks:
            self._start_flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_seconds, self._start_flush)

    async def wait_for_room(self) -> None:
        """Backpressure: while the buffer is over its bound, wait for the database to catch up.
        Raises once storing has failed for good."""
        if self._failure:
            raise StreamStorageError("storing the stream failed") from self._failure
        while len(self._pending) >= self.max_buffer and self._flushing is not None:
            await asyncio.shield(self._flushing)
        if len(self._pending) >= self.max_buffer:
            raise StreamStorageError(f"more than {self.max_buffer} chunks waiting to be stored")

    async def close(self) -> None:
        """Store everything still buffered; raises if storing failed."""
        await self.flush()

    async def flush(self) -> None:
        """Store everything buffered now, without waiting for the count or the timer; raises if
        storing failed. A stream about to wait for a person calls it, so that a replay shows why."""
        self._cancel_timer()
        while not self._failure and (self._flushing is not None or self._pending):
            if self._flushing is None:
                self._start_flush()
            await asyncio.shield(self._flushing)  # type: ignore[arg-type]
        if self._failure:
            raise StreamStorageError("storing the stream failed") from self._failure

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _start_flush(self) -> None:
        self._cancel_timer()
        if self._flushing is None and self._pending:
            self._flushing = asyncio.get_running_loop().create_task(self._flush_all())

    async def _flush_all(self) -> None:
        failures = 0
        try:
            while self._pending and not self._failure:
                batch, self._pending = self._pending, []
                self._cancel_timer()
                try:
                    still_wanted = await self._store(self.stream_id, batch)
                except Exception as error:  # keep the batch: the next attempt retries it
                    failures += 1
                    logger.warning("storing %d chunks of stream %s failed: %s", len(batch), self.stream_id, error)
                    self._pending[:0] = batch
                    if len(self._pending) >= self.max_buffer or failures >= MAX_FLUSH_ATTEMPTS:
                        self._failure = error
                    else:
                        await asyncio.sleep(self.flush_seconds * failures)
                    continue
                failures = 0
                self.flush_count += 1
                self.stored_through = batch[-1].index
                if not still_wanted and self.on_stop_requested:
                    self.on_stop_requested()
        finally:
            self._flushing = None
