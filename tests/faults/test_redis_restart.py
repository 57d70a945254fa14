"""Fault 2: Redis killed (SIGKILL) mid-stream and started again on its port; generation and storage go on."""
from __future__ import annotations

from channels.db import database_sync_to_async

from chatrooms.models import Message
from chatrooms.scripted_model_server import ScriptedReply
from tests.test_worker_shutdown import wait_for_chunks_stored

from .harness import check_stream, room_watched_from, start_answer, wait_until_finished


async def test_redis_restarted_mid_stream(cluster, sam):
    worker_a, worker_b = cluster.start_worker(), cluster.start_worker()
    room, (on_a, on_b) = await room_watched_from([worker_a, worker_b], "Redis restart")

    tokens = [f"r{i} " for i in range(80)]
    stream_id = await start_answer(cluster, on_a, room, ScriptedReply(tokens=tokens, delay=0.05),
                                   request_id="during", seen_by=on_b, until="r9 ")

    # Redis dies; the stream goes on storing chunks (the database is fine) while nobody hears them.
    cluster.redis.stop()
    await wait_for_chunks_stored(stream_id, max(on_b.shown[stream_id]) + 15)

    # A chat frame during the outage gets a clear answer (the rate counter is in Redis): an error with
    # its ref, nothing stored, and the socket stays open.
    other_room = await database_sync_to_async(_room_of)(room)
    await on_b.send({"type": "chat.send", "roomId": other_room, "requestId": "outage", "text": "hi", "ref": "o1"})
    refused = (await on_b.until("error", ref="o1"))[-1]
    assert refused["code"] == "internal", refused
    assert not await database_sync_to_async(Message.objects.filter(room_id=other_room).exists)()

    cluster.redis.start()
    # Both watchers end with the whole text and one stream.done: the gap detection or the quiet-stream
    # watchdog fills what the layer lost from the database.
    await on_a.until("stream.done", streamId=stream_id)
    await on_b.until("stream.done", streamId=stream_id)
    await wait_until_finished(stream_id)
    text = await check_stream(stream_id, [on_a, on_b], status="complete")
    assert text == "".join(tokens)

    # After the restart a new message works across workers: sent on B, streamed on B, seen on A.
    await on_b.send({"type": "chat.send", "roomId": room, "requestId": "after", "text": "again"})
    done_b = (await on_b.until("stream.done", requestId="after"))[-1]
    done_a = (await on_a.until("stream.done", requestId="after"))[-1]
    assert done_a["message"]["content"] == done_b["message"]["content"] == "Echo: again"
    await check_stream(done_a["streamId"], [on_a, on_b], status="complete")
    for watcher in (on_a, on_b):
        await watcher.close()


def _room_of(room_id: str) -> str:
    """A second room of sam's, made in the database (room.create counts against a limit kept in Redis)."""
    from chatrooms.models import Room

    room = Room.objects.get(pk=room_id)
    return str(Room.objects.create(owner=room.owner, name="During the outage").pk)
