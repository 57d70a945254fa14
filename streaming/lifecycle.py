"""A stream's life: start, heartbeat, cancel request, finish exactly once, stale detection, cleanup."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import Stream, StreamChunk


def stream_start(*, key: str, request_id: str) -> Stream:
    """Create a live stream; the partial unique index refuses a second live stream for one key."""
    return Stream.objects.create(key=key, request_id=request_id)


def stream_beat(*, stream_id: uuid.UUID) -> None:
    Stream.objects.filter(pk=stream_id, status=Stream.Status.STREAMING).update(heartbeat_at=timezone.now())


def stream_request_cancel(*, stream_id: uuid.UUID) -> bool:
    """Flag a live stream for cancellation; True if it was live."""
    return bool(
        Stream.objects.filter(pk=stream_id, status=Stream.Status.STREAMING).update(cancel_requested=True)
    )


def streams_request_cancel(*, stream_ids: list[uuid.UUID | str]) -> list[str]:
    """Flag the live ones among these streams for cancellation, in two queries however many; their ids."""
    live = [str(pk) for pk in Stream.objects.filter(pk__in=stream_ids, status=Stream.Status.STREAMING)
            .values_list("pk", flat=True)]
    Stream.objects.filter(pk__in=live, status=Stream.Status.STREAMING).update(cancel_requested=True)
    return live


def stream_finish(*, stream_id: uuid.UUID, status: str, if_stale_before: datetime | None = None) -> bool:
    """Move a live stream to a final status. Exactly one caller wins; the others get False.
    With `if_stale_before`, only while its heartbeat is still older than that: a worker that beat
    in the meantime keeps its stream."""
    if status == Stream.Status.STREAMING:
        raise ValueError("a stream cannot finish as streaming")
    live = Stream.objects.filter(pk=stream_id, status=Stream.Status.STREAMING)
    if if_stale_before is not None:
        live = live.filter(heartbeat_at__lt=if_stale_before)
    return bool(live.update(status=status, finished_at=timezone.now()))


def stale_cutoff(stale_seconds: float | None = None) -> datetime:
    """Heartbeats older than this are stale (default STREAM_STALE_SECONDS ago)."""
    seconds = settings.STREAM_STALE_SECONDS if stale_seconds is None else stale_seconds
    return timezone.now() - timedelta(seconds=seconds)


def streams_stale(
    *, stale_seconds: float | None = None, key: str | None = None, key_prefix: str = ""
) -> list[Stream]:
    """Live streams whose worker has not beaten their heartbeat within `stale_seconds`
    (default STREAM_STALE_SECONDS)."""
    queryset = Stream.objects.filter(status=Stream.Status.STREAMING, heartbeat_at__lt=stale_cutoff(stale_seconds))
    if key is not None:
        queryset = queryset.filter(key=key)
    if key_prefix:
        queryset = queryset.filter(key__startswith=key_prefix)
    return list(queryset.order_by("created_at"))


def streams_delete_for_keys(*, keys: list[str]) -> int:
    """Delete every stream of these keys with its chunks (the caller has cancelled live ones)."""
    deleted, _ = Stream.objects.filter(key__in=keys).delete()
    return deleted


def chunks_cleanup(*, older_than: datetime, batch_size: int = 5000, dry_run: bool = False) -> int:
    """Delete the chunks of streams that finished before `older_than`, in batches; live streams untouched."""
    final = [status for status in Stream.Status.values if status != Stream.Status.STREAMING]
    finished = Stream.objects.filter(status__in=final, finished_at__lt=older_than)  # the (status, finished_at) index
    chunks = StreamChunk.objects.filter(stream__in=finished.values("pk"))
    if dry_run:
        return chunks.count()
    total = 0
    while True:
        with transaction.atomic():
            ids = list(chunks.values_list("pk", flat=True)[:batch_size])
            if not ids:
                return total
            total += StreamChunk.objects.filter(pk__in=ids).delete()[0]
