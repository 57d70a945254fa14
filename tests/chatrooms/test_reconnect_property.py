"""Property: however many chunks a client saw before it dropped, rejoining rebuilds the stored message."""
from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from chatrooms.models import Message
from chatrooms.scripted_model_server import ScriptedReply
from tests.factories import make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)
TOKENS = [f"w{i} " for i in range(25)]


def chunk_frames(frames: list[dict]) -> list[dict]:
    return [f for f in frames if f["type"] == "stream.chunk"]


@hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(seen=st.integers(min_value=0, max_value=len(TOKENS) + 3),
       cursor=st.sampled_from(["since", "absent", "older-stream"]))
def test_reconnecting_rebuilds_the_stored_text_without_gap_or_duplicate(scripted_model, connect_factory, seen, cursor):
    async_to_sync(reconnect_scenario)(scripted_model, connect_factory, seen, cursor)


async def reconnect_scenario(scripted_model, connect_factory, seen: int, cursor: str) -> None:
    connect, close_all = connect_factory()
    try:
        user = await database_sync_to_async(make_user)(f"u{await database_sync_to_async(Message.objects.count)()}-{seen}-{cursor}")
        room = await database_sync_to_async(make_room)(user)
        client = await connect(user)
        await client.send({"type": "room.join", "roomId": str(room.pk)})
        await client.receive_until("messages")
        older = None
        if cursor == "older-stream":
            await client.send({"type": "chat.send", "requestId": "old", "text": "first"})
            older = (await client.receive_until("stream.done"))[-1]["streamId"]
        scripted_model.enqueue(ScriptedReply(tokens=TOKENS, hold_open=True))
        await client.send({"type": "chat.send", "requestId": "r", "text": "go"})
        before = await client.receive_until("stream.start")
        for _ in range(seen):  # deltas may be coalesced: there may be fewer chunks than tokens
            if _all_tokens_seen(chunk_frames(before), []):
                break
            before.append(await client.receive())
        before_chunks = chunk_frames(before)
        stream_id = before[[f["type"] for f in before].index("stream.start")]["streamId"]
        await client.close()

        client = await connect(user)
        join = {"type": "room.join", "roomId": str(room.pk)}
        if cursor == "since":
            join["since"] = {"streamId": stream_id, "index": before_chunks[-1]["index"] if before_chunks else -1}
        elif cursor == "older-stream":
            join["since"] = {"streamId": older, "index": 3}
        await client.send(join)
        after = await client.receive_until("stream.replay_complete")
        # Let every token through, then stop the answer so it is stored.
        while "".join(f["chunk"].get("delta", "") for f in chunk_frames(after) if f["chunk"]["type"] == "text-delta") \
                != "".join(TOKENS) and not (cursor == "since" and _all_tokens_seen(before_chunks, after)):
            after.append(await client.receive())
        await client.send({"type": "chat.cancel", "requestId": "r"})
        after += await client.receive_until("stream.done")

        kept = before_chunks if cursor == "since" else []
        indexes = [f["index"] for f in kept + chunk_frames(after)]
        assert indexes == list(range(len(indexes))), f"no gap and no duplicate: {indexes}"
        text = "".join(f["chunk"]["delta"] for f in kept + chunk_frames(after) if f["chunk"]["type"] == "text-delta")
        stored = await database_sync_to_async(Message.objects.get)(stream_id=stream_id)
        assert text == stored.content == "".join(TOKENS)
    finally:
        await close_all()


def _all_tokens_seen(before: list[dict], after: list[dict]) -> bool:
    frames = before + chunk_frames(after)
    return "".join(f["chunk"]["delta"] for f in frames if f["chunk"]["type"] == "text-delta") == "".join(TOKENS)
