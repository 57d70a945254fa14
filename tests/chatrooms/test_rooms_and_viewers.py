"""Rooms over the socket and what every viewer sees: other tabs, other members, joins mid-stream."""
from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from chatrooms.models import Message, Room
from chatrooms.scripted_model_server import ScriptedReply
from streaming.models import Stream, StreamChunk
from tests.chatrooms.test_access_recheck import shared_room_with_viewers
from tests.chatrooms.test_chat_flow import joined_room, start_room, text_of
from tests.factories import add_member, make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)


async def test_room_list_reaches_every_connection_that_can_see_the_room(scripted_model, connect):
    alice = await database_sync_to_async(make_user)("alice")
    bob = await database_sync_to_async(make_user)("bob")
    carol = await database_sync_to_async(make_user)("carol")
    room = await database_sync_to_async(make_room)(alice, "Shared")
    await database_sync_to_async(add_member)(room, bob)
    alice_tab1, alice_tab2 = await connect(alice), await connect(alice)
    bob_tab, carol_tab = await connect(bob), await connect(carol)

    await alice_tab1.send({"type": "room.rename", "roomId": str(room.pk), "name": "Renamed", "ref": "x"})
    assert (await alice_tab1.receive_until("ack"))[-1]["ref"] == "x"
    for client in (alice_tab1, alice_tab2, bob_tab):
        rooms = (await client.receive_until("rooms"))[-1]["rooms"]
        assert [(r["id"], r["name"]) for r in rooms] == [(str(room.pk), "Renamed")]
    assert await carol_tab.nothing_more()

    await alice_tab2.send({"type": "room.configure", "roomId": str(room.pk), "model": "openai/other",
                           "systemPrompt": "Be brief."})
    await alice_tab2.receive_until("ack")
    rooms = (await bob_tab.receive_until("rooms"))[-1]["rooms"]
    assert rooms[0]["model"] == "openai/other" and rooms[0]["systemPrompt"] == "Be brief."

    await bob_tab.send({"type": "chat.send", "roomId": str(room.pk), "requestId": "b1", "text": "hi"})
    await bob_tab.receive_until("stream.done")
    request = scripted_model.requests[-1]
    assert request["model"] == "other" and request["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_two_users_and_a_second_tab_see_the_same_live_stream(scripted_model, connect):
    alice = await database_sync_to_async(make_user)("alice")
    bob = await database_sync_to_async(make_user)("bob")
    room = await database_sync_to_async(make_room)(alice, "Shared")
    await database_sync_to_async(add_member)(room, bob)
    clients = [await connect(alice), await connect(alice), await connect(bob)]
    for client in clients:
        await client.send({"type": "room.join", "roomId": str(room.pk)})
        await client.receive_until("messages")
    scripted_model.enqueue(ScriptedReply(tokens=[f"w{i} " for i in range(30)], delay=0.005))
    await clients[2].send({"type": "chat.send", "requestId": "q", "text": "from bob"})
    results = [await client.receive_until("stream.done") for client in clients]
    expected = "".join(f"w{i} " for i in range(30))
    for frames in results:
        created = next(f for f in frames if f["type"] == "message.created")
        assert created["message"]["author"] == "bob" and created["message"]["content"] == "from bob"
        indexes = [f["index"] for f in frames if f["type"] == "stream.chunk"]
        assert indexes == list(range(len(indexes)))
        assert text_of(frames) == expected == frames[-1]["message"]["content"]


async def test_joining_mid_stream_replays_then_continues_without_gap_or_duplicate(scripted_model, connect):
    user = await database_sync_to_async(make_user)()
    first = await connect(user)
    room_id = await joined_room(first)
    scripted_model.enqueue(ScriptedReply(tokens=[f"t{i} " for i in range(60)], delay=0.01))
    await first.send({"type": "chat.send", "requestId": "q", "text": "go"})
    seen = await first.receive_until_text("t20 ")
    stream_id, seen_through = seen[-1]["streamId"], seen[-1]["index"]

    late = await connect(user)
    await late.send({"type": "room.join", "roomId": room_id})
    late_frames = await late.receive_until("stream.done")
    types = [f["type"] for f in late_frames]
    assert types[0] == "messages" and types[1] == "stream.resuming"
    replayed = [f for f in late_frames if f["type"] == "stream.chunk" and f.get("replay")]
    complete = late_frames[types.index("stream.replay_complete")]
    assert complete["lastIndex"] == (replayed[-1]["index"] if replayed else -1)
    assert [f["index"] for f in late_frames if f["type"] == "stream.chunk"] == list(range(len([f for f in late_frames if f["type"] == "stream.chunk"])))

    # Reconnecting with `since` gets only what came after it.
    again = await connect(user)
    await again.send({"type": "room.join", "roomId": room_id, "since": {"streamId": stream_id, "index": seen_through}})
    frames = await again.receive_until("messages")
    done = late_frames[-1]
    # The stream has ended by now: the message is in `messages`, complete, and nothing is replayed.
    assert frames[-1]["messages"][-1]["content"] == done["message"]["content"] == text_of(late_frames)
    assert await again.nothing_more()


async def test_rejoin_with_since_during_a_stream_resumes_after_that_index(scripted_model, connect):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    room_id = await joined_room(client)
    scripted_model.enqueue(ScriptedReply(tokens=[f"t{i} " for i in range(40)], hold_open=True))
    await client.send({"type": "chat.send", "requestId": "q", "text": "go"})
    before = await client.receive_until_text("t15 ")
    stream_id, seen_through = before[-1]["streamId"], before[-1]["index"]
    await client.close()

    client = await connect(user)
    await client.send({"type": "room.join", "roomId": room_id, "since": {"streamId": stream_id, "index": seen_through}})
    frames = await client.receive_until("stream.replay_complete")
    replayed = [f["index"] for f in frames if f["type"] == "stream.chunk"]
    assert all(f.get("replay") for f in frames if f["type"] == "stream.chunk")
    await client.send({"type": "chat.cancel", "requestId": "q"})
    rest = await client.receive_until("stream.done")
    live = [f["index"] for f in rest if f["type"] == "stream.chunk"]
    first = seen_through + 1
    assert replayed + live == list(range(first, first + len(replayed) + len(live)))
    assert text_of(before + frames + rest) == rest[-1]["message"]["content"]


async def test_regenerate_replaces_the_last_answer(scripted_model, connect):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(ScriptedReply(tokens=["first"]), ScriptedReply(tokens=["second"]))
    await client.send({"type": "chat.send", "requestId": "q1", "text": "hi"})
    first = (await client.receive_until("stream.done"))[-1]["message"]
    await client.send({"type": "chat.regenerate", "requestId": "q2"})
    frames = await client.receive_until("stream.done")
    assert {"type": "message.removed", "roomId": first["roomId"], "messageId": first["id"]} in frames
    assert frames[-1]["message"]["content"] == "second"
    contents = await database_sync_to_async(list)(Message.objects.order_by("id").values_list("role", "content"))
    assert contents == [("user", "hi"), ("assistant", "second")]
    assert scripted_model.requests[-1]["messages"][-1] == {"role": "user", "content": "hi"}


async def test_edit_replaces_a_message_and_drops_everything_after_it(scripted_model, connect):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    for text in ("one", "two"):
        await client.send({"type": "chat.send", "requestId": text, "text": text})
        await client.receive_until("stream.done")
    first_user = await database_sync_to_async(Message.objects.filter(role="user").order_by("id").first)()
    later = await database_sync_to_async(list)(Message.objects.filter(id__gt=first_user.pk).values_list("id", flat=True))
    await client.send({"type": "chat.edit", "requestId": "e", "messageId": str(first_user.pk), "text": "uno"})
    frames = await client.receive_until("stream.done")
    removed = [int(f["messageId"]) for f in frames if f["type"] == "message.removed"]
    assert removed == later
    updated = next(f for f in frames if f["type"] == "message.updated")["message"]
    assert updated["content"] == "uno" and updated["id"] == str(first_user.pk)
    assert frames[-1]["message"]["content"] == "Echo: uno"
    contents = await database_sync_to_async(list)(Message.objects.order_by("id").values_list("content", flat=True))
    assert contents == ["uno", "Echo: uno"]


async def test_clear_and_delete_cancel_a_live_stream_and_remove_everything(scripted_model, connect):
    alice, room, owner, member = await shared_room_with_viewers(connect)
    scripted_model.enqueue(ScriptedReply(tokens=["x"], hold_open=True))
    await owner.send({"type": "chat.send", "requestId": "q", "text": "hi"})
    await member.receive_until_text("x")  # the model is answering: its request is open

    await owner.send({"type": "room.clear", "roomId": str(room.pk)})
    frames = await member.receive_until("room.cleared")
    assert frames[-1] == {"type": "room.cleared", "roomId": str(room.pk)}
    assert await database_sync_to_async(scripted_model.client_disconnected.wait)(10)
    assert await database_sync_to_async(Message.objects.filter(room=room).count)() == 0
    assert await database_sync_to_async(Stream.objects.count)() == 0 and await database_sync_to_async(StreamChunk.objects.count)() == 0
    rooms = (await member.receive_until("rooms"))[-1]["rooms"]
    assert rooms[0]["messageCount"] == 0

    await owner.send({"type": "room.delete", "roomId": str(room.pk)})
    assert (await member.receive_until("room.deleted"))[-1] == {"type": "room.deleted", "roomId": str(room.pk)}
    assert (await member.receive_until("rooms"))[-1]["rooms"] == []
    assert not await database_sync_to_async(Room.objects.exists)()
    await member.send({"type": "room.join", "roomId": str(room.pk)})
    assert (await member.receive_until("error"))[-1]["code"] == "not_found"


async def test_leave_stops_the_room_frames(scripted_model, connect):
    user = await database_sync_to_async(make_user)()
    watcher, sender = await connect(user), await connect(user)
    room_id = await joined_room(watcher)
    await watcher.send({"type": "room.leave", "roomId": room_id, "ref": "l"})
    assert (await watcher.receive_until("ack"))[-1] == {"type": "ack", "ref": "l"}
    await sender.send({"type": "chat.send", "roomId": room_id, "requestId": "q", "text": "hi"})
    await sender.receive_until("stream.done")
    frames = await watcher.receive_until("rooms")
    assert all(f["type"] == "rooms" for f in frames)


async def test_chat_send_to_another_room_joins_it_first(scripted_model, connect):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    first = await joined_room(client, "First")
    second = await start_room(client, "Second")
    await client.send({"type": "chat.send", "roomId": second, "requestId": "q", "text": "hi"})
    frames = await client.receive_until("stream.done")
    frames = [f for f in frames if f["type"] != "rooms"]
    assert frames[0] == {"type": "messages", "roomId": second, "messages": []}
    assert all(f["roomId"] == second for f in frames)
    assert first != second
