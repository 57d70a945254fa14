"""Reading stored chunks back: everything after an index, or one exact range to fill a gap."""
from __future__ import annotations

import uuid

from .models import StreamChunk


def chunks_after(*, stream_id: uuid.UUID, after_index: int, up_to: int | None = None) -> list[tuple[int, str]]:
    """Stored chunks with index > after_index (and <= up_to), as (index, JSON text), in order."""
    queryset = StreamChunk.objects.filter(stream_id=stream_id, index__gt=after_index)
    if up_to is not None:
        queryset = queryset.filter(index__lte=up_to)
    return list(queryset.order_by("index").values_list("index", "body"))


def last_chunk_index(*, stream_id: uuid.UUID | str) -> int:
    """The highest stored index of a stream, -1 when it has none."""
    last = StreamChunk.objects.filter(stream_id=stream_id).order_by("-index").values_list("index", flat=True).first()
    return -1 if last is None else last
