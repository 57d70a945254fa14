"""The recorder: batches by count and by time, all streams of a process in one write, stores oversized
chunks truncated, honours a cancel flag, and keeps one stream's refused rows from failing the others."""
from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User

from chatrooms import services
from streaming.models import Stream, StreamChunk
from streaming.recorder import StreamRecorder, StreamStorageError, fit_chunk_body
from tests.factories import make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def live_stream_id() -> str:
    user = make_user(f"u{User.objects.count()}")
    return services.chat_send(user=user, room_id=make_room(user).pk, request_id="r", text="hi").stream_id


def stored_indexes(stream_id: str) -> list[int]:
    return list(StreamChunk.objects.filter(stream_id=stream_id).order_by("index").values_list("index", flat=True))


async def test_flushes_after_n_chunks_and_after_t_milliseconds_and_at_close():
    stream_id = await database_sync_to_async(live_stream_id)()
    recorder = StreamRecorder(stream_id, flush_chunks=3, flush_ms=50)
    writer = recorder._writer
    chunk = {"type": "text-delta", "id": "t", "delta": "x"}
    for index in range(3):
        recorder.add(index, chunk, json.dumps(chunk))
    assert writer._task is not None, "the third chunk starts a write at once"
    await writer._task
    assert await database_sync_to_async(stored_indexes)(stream_id) == [0, 1, 2]

    loop = asyncio.get_running_loop()
    added_at = loop.time()
    recorder.add(3, chunk, json.dumps(chunk))
    assert writer._task is None and writer._timer is not None, "one chunk waits for the timer"
    written = loop.create_future()  # resolved by the next write of this stream, without hurrying it
    recorder._waiters.append(written)
    await asyncio.wait_for(written, 5)
    assert loop.time() - added_at >= 0.05
    assert await database_sync_to_async(stored_indexes)(stream_id) == [0, 1, 2, 3]

    recorder.add(4, chunk, json.dumps(chunk))
    await recorder.close()
    assert await database_sync_to_async(stored_indexes)(stream_id) == [0, 1, 2, 3, 4]
    assert recorder.flush_count == 3


async def test_one_write_stores_the_chunks_of_every_stream_of_the_process():
    stream_ids = [await database_sync_to_async(live_stream_id)() for _ in range(3)]
    recorders = [StreamRecorder(stream_id, flush_chunks=100, flush_ms=10_000) for stream_id in stream_ids]
    writer = recorders[0]._writer
    before = writer.write_count
    chunk = {"type": "text-delta", "id": "t", "delta": "x"}
    for recorder in recorders:
        for index in range(4):
            recorder.add(index, chunk, json.dumps(chunk))
    await recorders[0].flush()  # the others' chunks go with it
    assert writer.write_count == before + 1
    for stream_id, recorder in zip(stream_ids, recorders, strict=True):
        assert recorder.stored_through == 3 and recorder.unstored == 0
        assert await database_sync_to_async(stored_indexes)(stream_id) == [0, 1, 2, 3]


async def test_rows_the_database_refuses_fail_only_their_own_stream():
    good, bad = [await database_sync_to_async(live_stream_id)() for _ in range(2)]
    await database_sync_to_async(StreamChunk.objects.create)(stream_id=bad, index=0, body="{}")
    refused = StreamRecorder(bad, flush_chunks=100, max_buffer=1)  # one failure and it gives up
    stored = StreamRecorder(good, flush_chunks=100)
    chunk = {"type": "start-step"}
    refused.add(0, chunk, json.dumps(chunk))  # index 0 of that stream is taken
    stored.add(0, chunk, json.dumps(chunk))
    await stored.flush()
    assert await database_sync_to_async(stored_indexes)(good) == [0]
    with pytest.raises(StreamStorageError):
        await refused.flush()
    assert refused.failed and not stored.failed


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
