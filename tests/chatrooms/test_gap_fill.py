"""A channel layer that drops messages must not cost a viewer a single chunk."""
from __future__ import annotations

import logging

import pytest
from channels.db import database_sync_to_async

from chatrooms.scripted_model_server import ScriptedReply
from streaming.layers import OneProcessChannelLayer
from tests.chatrooms.test_chat_flow import text_of
from tests.factories import make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)


class DroppingLayer(OneProcessChannelLayer):
    """The default in-memory layer, losing every fourth batch of chunks sent to a group. A queue of one message
    (below) overflowed too while consumers hopped to the shared database thread for every message;
    now that they do not, they keep up with it, and drops must be made."""

    sent = 0

    async def group_send(self, group: str, message: dict) -> None:
        if message.get("type") == "stream.chunks":
            DroppingLayer.sent += 1
            if DroppingLayer.sent % 4 == 0:
                return
        await super().group_send(group, message)


async def test_chunks_dropped_by_a_full_channel_queue_are_filled_from_the_database(
    scripted_model, connect, settings, caplog
):
    # A queue of one message per channel, and every fourth batch of chunks lost on the way.
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "tests.chatrooms.test_gap_fill.DroppingLayer",
                                           "CONFIG": {"capacity": 1}}}
    caplog.set_level(logging.INFO, logger="chatrooms.consumers")
    user = await database_sync_to_async(make_user)()
    room = await database_sync_to_async(make_room)(user)
    watchers = [await connect(user) for _ in range(3)]
    for watcher in watchers:
        await watcher.send({"type": "room.join", "roomId": str(room.pk)})
        await watcher.receive_until("messages")
    tokens = [f"{i} " for i in range(1500)]
    scripted_model.enqueue(ScriptedReply(tokens=tokens))
    await watchers[0].send({"type": "chat.send", "requestId": "q", "text": "fast"})

    for watcher in watchers:
        frames = await watcher.receive_until("stream.done", timeout=60)
        indexes = [f["index"] for f in frames if f["type"] == "stream.chunk"]
        assert indexes == list(range(len(indexes))), "every index once, in order"
        assert text_of(frames) == "".join(tokens) == frames[-1]["message"]["content"]
    assert "from the database" in caplog.text, "the layer dropped chunks and viewers filled the gap"
