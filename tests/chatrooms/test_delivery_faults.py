"""Delivery when the channel layer loses messages or the database cannot store chunks."""
from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection

from chatrooms.models import Message
from chatrooms.scripted_model_server import ScriptedReply
from streaming.models import Stream
from tests.chatrooms.test_chat_flow import text_of
from tests.factories import make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)
IN_MEMORY = {"default": {"BACKEND": "streaming.layers.OneProcessChannelLayer", "CONFIG": {"capacity": 1000}}}


def chunk_indexes(frames: list[dict]) -> list[int]:
    return [f["index"] for f in frames if f["type"] == "stream.chunk"]


async def joined_viewers(user, room, count: int, connect) -> list:
    viewers = [await connect(user) for _ in range(count)]
    for viewer in viewers:
        await viewer.send({"type": "room.join", "roomId": str(room.pk)})
        await viewer.receive_until("messages")
    return viewers


async def test_viewers_dropped_from_the_group_mid_stream_get_the_rest_and_stream_done(
    scripted_model, connect, settings
):
    """As when the layer expires a slow channel from its groups: chunks, then stream.done, are lost."""
    settings.CHANNEL_LAYERS = IN_MEMORY
    user = await database_sync_to_async(make_user)()
    room = await database_sync_to_async(make_room)(user)
    viewers = await joined_viewers(user, room, 2, connect)
    tokens = [f"t{i} " for i in range(30)]
    scripted_model.enqueue(ScriptedReply(tokens=tokens, delay=0.01))
    await viewers[0].send({"type": "chat.send", "requestId": "q", "text": "go"})
    before = [await v.receive_until_text("t5 ") for v in viewers]
    get_channel_layer().groups[f"room.{room.pk}"].clear()

    for viewer, seen in zip(viewers, before):
        frames = seen + await viewer.receive_until("stream.done", timeout=15)
        assert chunk_indexes(frames) == list(range(len(chunk_indexes(frames))))
        assert text_of(frames) == "".join(tokens) == frames[-1]["message"]["content"]
        assert frames[-1]["status"] == "complete"
    # The check subscribed them again: the next answer arrives live.
    await viewers[1].send({"type": "chat.send", "requestId": "q2", "text": "again"})
    assert (await viewers[0].receive_until("stream.done"))[-1]["message"]["content"] == "Echo: again"


async def test_a_viewer_that_missed_stream_start_catches_up_from_the_first_chunk(scripted_model, connect, settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    user = await database_sync_to_async(make_user)()
    room = await database_sync_to_async(make_room)(user)
    sender, watcher = await joined_viewers(user, room, 2, connect)
    layer = get_channel_layer()
    group = layer.groups[f"room.{room.pk}"]
    watcher_channel = next(channel for channel in group if channel != next(iter(group)))
    away = {watcher_channel: group.pop(watcher_channel)}
    tokens = [f"t{i} " for i in range(20)]
    scripted_model.enqueue(ScriptedReply(tokens=tokens, delay=0.02))
    await sender.send({"type": "chat.send", "requestId": "q", "text": "go"})
    await sender.receive_until("stream.chunk", index=6)
    group.update(away)

    frames = await watcher.receive_until("stream.done", timeout=15)
    stream_frames = [f for f in frames if f["type"] not in ("rooms", "message.created")]
    assert stream_frames[0]["type"] == "stream.start" and stream_frames[0]["requestId"] == "q"
    assert chunk_indexes(frames) == list(range(len(chunk_indexes(frames))))
    assert text_of(frames) == "".join(tokens) == frames[-1]["message"]["content"]


async def test_events_queued_before_a_join_do_not_repeat_what_the_join_sent(scripted_model, connect):
    user = await database_sync_to_async(make_user)()
    room = await database_sync_to_async(make_room)(user)
    (sender,) = await joined_viewers(user, room, 1, connect)
    scripted_model.enqueue(ScriptedReply(tokens=["a ", "b ", "c "], hold_open=True))
    await sender.send({"type": "chat.send", "requestId": "q", "text": "go"})
    started = await sender.receive_until_text("a b c ")
    start = next(f for f in started if f["type"] == "stream.start")
    created = next(f for f in started if f["type"] == "message.created")

    late = await connect(user)
    await late.send({"type": "room.join", "roomId": str(room.pk)})
    joined = await late.receive_until("stream.replay_complete")
    # The same events again, as if they had been queued between the join's subscribe and its read.
    layer = get_channel_layer()
    for frame in (created, start):
        await layer.group_send(f"room.{room.pk}", {"type": "room.frame", "roomId": str(room.pk), "frame": frame})
    await sender.send({"type": "chat.cancel", "requestId": "q"})
    rest = await late.receive_until("stream.done")
    assert not [f for f in rest if f["type"] in ("stream.start", "message.created")]
    indexes = chunk_indexes(joined + rest)
    assert indexes == list(range(len(indexes)))
    assert text_of(joined + rest) == rest[-1]["message"]["content"] == "a b c "


async def test_a_database_that_cannot_store_chunks_ends_the_stream_with_an_error(scripted_model, connect, settings):
    settings.STREAM_BUFFER_MAX_CHUNKS = 8
    user = await database_sync_to_async(make_user)()
    room = await database_sync_to_async(make_room)(user)
    (client,) = await joined_viewers(user, room, 1, connect)

    def move_chunk_table(source: str, target: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {source} RENAME TO {target}")

    await database_sync_to_async(move_chunk_table)("streaming_streamchunk", "streaming_streamchunk_away")
    try:
        scripted_model.enqueue(ScriptedReply(tokens=[f"t{i} " for i in range(200)], delay=0.002))
        await client.send({"type": "chat.send", "requestId": "q", "text": "go"})
        frames = await client.receive_until("stream.done", timeout=30)
    finally:
        await database_sync_to_async(move_chunk_table)("streaming_streamchunk_away", "streaming_streamchunk")
    done = frames[-1]
    assert done["status"] == "error"
    assert done["message"]["content"] == text_of(frames)
    assert [f for f in frames if f["type"] == "error"][0]["code"] == "model_error"
    assert await database_sync_to_async(Stream.objects.filter(status="streaming").exists)() is False
    assert await database_sync_to_async(Message.objects.filter(status="streaming").exists)() is False
    # The room is free again.
    await client.send({"type": "chat.send", "requestId": "q2", "text": "next"})
    assert (await client.receive_until("stream.done"))[-1]["status"] == "complete"
