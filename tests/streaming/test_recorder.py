"""The recorder: batches by count and by time, stores oversized chunks truncated, honours a cancel flag."""
from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async

from chatrooms import services
from streaming.models import Stream, StreamChunk
from streaming.recorder import StreamRecorder, fit_chunk_body
from tests.factories import make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def live_stream_id() -> str:
    user = make_user()
    return services.chat_send(user=user, room_id=make_room(user).pk, request_id="r", text="hi").stream_id


def stored_indexes(stream_id: str) -> list[int]:
    return list(StreamChunk.objects.filter(stream_id=stream_id).order_by("index").values_list("index", flat=True))


async def test_flushes_after_n_chunks_and_after_t_milliseconds_and_at_close():
    stream_id = await database_sync_to_async(live_stream_id)()
    flushed = asyncio.Event()
    recorder = StreamRecorder(stream_id, flush_chunks=3, flush_ms=50)
    chunk = {"type": "text-delta", "id": "t", "delta": "x"}
    for index in range(3):
        recorder.add(index, chunk, json.dumps(chunk))
    assert recorder._flushing is not None, "the third chunk starts a flush at once"
    await recorder._flushing
    assert await database_sync_to_async(stored_indexes)(stream_id) == [0, 1, 2]

    recorder.add(3, chunk, json.dumps(chunk))
    assert recorder._flushing is None and recorder._timer is not None, "one chunk waits for the timer"
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, flushed.set)
    await flushed.wait()
    assert await database_sync_to_async(stored_indexes)(stream_id) == [0, 1, 2, 3]

    recorder.add(4, chunk, json.dumps(chunk))
    await recorder.close()
    assert await database_sync_to_async(stored_indexes)(stream_id) == [0, 1, 2, 3, 4]
    assert recorder.flush_count == 3


async def test_a_chunk_too_large_to_store_is_stored_truncated_with_a_marker():
    stream_id = await database_sync_to_async(live_stream_id)()
    recorder = StreamRecorder(stream_id, max_chunk_bytes=1000)
    big = {"type": "text-delta", "id": "t1", "delta": "y" * 5000}
    recorder.add(0, big, json.dumps(big))
    await recorder.close()
    body = json.loads(await database_sync_to_async(lambda: StreamChunk.objects.get(stream_id=stream_id).body)())
    assert body["truncated"] is True and body["originalBytes"] == len(json.dumps(big))
    assert body["type"] == "text-delta" and body["id"] == "t1" and body["delta"] == "y" * 125


def test_fit_chunk_body_leaves_small_chunks_alone():
    chunk = {"type": "text-delta", "id": "t", "delta": "é" * 10}
    assert fit_chunk_body(chunk, json.dumps(chunk), 1000) == json.dumps(chunk)


async def test_a_cancel_flag_set_in_the_database_stops_the_stream_at_the_next_flush():
    stream_id = await database_sync_to_async(live_stream_id)()
    stopped = asyncio.Event()
    recorder = StreamRecorder(stream_id, flush_chunks=1, on_stop_requested=stopped.set)
    await database_sync_to_async(Stream.objects.filter(pk=stream_id).update)(cancel_requested=True)
    chunk = {"type": "start-step"}
    recorder.add(0, chunk, json.dumps(chunk))
    await asyncio.wait_for(stopped.wait(), 5)
    await recorder.close()


async def test_chunks_of_a_deleted_stream_are_dropped_without_retrying():
    stream_id = await database_sync_to_async(live_stream_id)()
    stopped = asyncio.Event()
    recorder = StreamRecorder(stream_id, flush_chunks=1, on_stop_requested=stopped.set)
    await database_sync_to_async(Stream.objects.filter(pk=stream_id).delete)()
    chunk = {"type": "start-step"}
    recorder.add(0, chunk, json.dumps(chunk))
    await asyncio.wait_for(recorder.close(), 2)
    assert stopped.is_set() and recorder.flush_count == 1
    assert not await database_sync_to_async(StreamChunk.objects.exists)()
