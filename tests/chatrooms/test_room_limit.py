"""ROOM_MAX_MESSAGES: each finished answer removes the room's oldest messages beyond the limit, and viewers hear of it."""
from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async

from chatrooms import events, services
from chatrooms.models import Message
from tests.chatrooms.test_chat_flow import joined_room
from tests.factories import add_member, make_room, make_user


def finish(start: services.ReplyStart, content: str = "answer") -> Message | None:
    return services.reply_finish(start=start, status="complete", content=content,
                                 parts=[{"type": "text", "text": content}], last_index=0)


def exchange(user: Any, room_id: int, text: str) -> Message | None:
    return finish(services.chat_send(user=user, room_id=room_id, request_id=text, text=text), f"Echo: {text}")


def room_message_ids(room_id: int) -> list[int]:
    return list(Message.objects.filter(room_id=room_id).order_by("id").values_list("id", flat=True))


@pytest.fixture
def broadcasts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """What services send to the channel layer after commit, in order."""
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(events, "_send_now", lambda group, event: sent.append((group, event)))
    return sent


@pytest.mark.django_db
def test_without_a_limit_nothing_is_removed(settings, django_assert_num_queries):
    settings.ROOM_MAX_MESSAGES = 0
    user = make_user()
    room = make_room(user)
    for text in ("one", "two", "three"):
        exchange(user, room.pk, text)
    with django_assert_num_queries(2):  # only the SAVEPOINT and RELEASE of its transaction
        assert services.room_prune_messages(room_id=room.pk) == []
    assert len(room_message_ids(room.pk)) == 6


@pytest.mark.django_db
def test_the_oldest_messages_beyond_the_limit_go_and_the_live_placeholder_stays(
    settings, django_assert_num_queries, django_capture_on_commit_callbacks, broadcasts
):
    settings.ROOM_MAX_MESSAGES = 0
    owner, member = make_user("owner"), make_user("member")
    room = make_room(owner)
    add_member(room, member)
    exchange(owner, room.pk, "one")
    exchange(owner, room.pk, "two")
    live = services.chat_send(user=owner, room_id=room.pk, request_id="three", text="three")
    ids = room_message_ids(room.pk)
    assert len(ids) == 6 and ids[-1] == live.message_id  # five finished messages and the placeholder

    settings.ROOM_MAX_MESSAGES = 3
    broadcasts.clear()
    # SAVEPOINT, the ids beyond the limit, the delete (Django reads the messages, then deletes their
    # feedback and attachments, then them: four statements), the room's owner, its members, RELEASE.
    with django_capture_on_commit_callbacks(execute=True), django_assert_num_queries(9):
        removed = services.room_prune_messages(room_id=room.pk)

    assert removed == ids[:2]
    assert room_message_ids(room.pk) == ids[2:]
    assert Message.objects.get(pk=live.message_id).status == Message.Status.STREAMING
    assert broadcasts == [
        (events.room_group(room.pk), {"type": "room.frame", "roomId": str(room.pk),
                                      "frame": {"type": "message.removed", "roomId": str(room.pk),
                                                "messageId": str(message_id)}})
        for message_id in ids[:2]
    ] + [(events.user_group(user.pk), {"type": "rooms.changed"}) for user in (owner, member)]
    # Within the limit already: one query for the ids, nothing removed, nothing sent.
    broadcasts.clear()
    with django_capture_on_commit_callbacks(execute=True), django_assert_num_queries(3):
        assert services.room_prune_messages(room_id=room.pk) == []
    assert broadcasts == []


@pytest.mark.django_db
def test_the_placeholder_is_kept_even_when_it_is_the_oldest_message(settings):
    settings.ROOM_MAX_MESSAGES = 1
    user = make_user()
    room = make_room(user)
    placeholder = Message.objects.create(room=room, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING)
    finished = [Message.objects.create(room=room, role=Message.Role.USER, content=str(i)) for i in range(3)]
    assert services.room_prune_messages(room_id=room.pk) == [m.pk for m in finished[:2]]
    assert room_message_ids(room.pk) == [placeholder.pk, finished[-1].pk]


@pytest.mark.django_db
def test_a_finished_answer_enforces_the_limit_and_stays(settings):
    settings.ROOM_MAX_MESSAGES = 3
    user = make_user()
    room = make_room(user)
    exchange(user, room.pk, "one")
    answer = exchange(user, room.pk, "two")
    assert answer is not None
    remaining = list(Message.objects.filter(room=room).order_by("id").values_list("content", flat=True))
    assert remaining == ["Echo: one", "two", "Echo: two"]
    settings.ROOM_MAX_MESSAGES = 1
    assert exchange(user, room.pk, "three").content == "Echo: three"
    assert list(Message.objects.filter(room=room).values_list("content", flat=True)) == ["Echo: three"]


@pytest.mark.django_db(transaction=True)
async def test_over_the_socket_the_oldest_messages_are_removed_after_an_answer(scripted_model, connect, settings):
    settings.ROOM_MAX_MESSAGES = 2
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    room_id = await joined_room(client)

    await client.send({"type": "chat.send", "requestId": "q1", "text": "one"})
    first = await client.receive_until("stream.done")
    first_user = next(f for f in first if f["type"] == "message.created")["message"]
    first_answer = first[-1]["message"]
    assert (await client.receive_until("rooms"))[-1]["rooms"][0]["messageCount"] == 2
    assert not any(f["type"] == "message.removed" for f in client.seen)

    await client.send({"type": "chat.send", "requestId": "q2", "text": "two"})
    second = await client.receive_until("stream.done")
    rest = await client.receive_until("rooms")
    removed = [f["messageId"] for f in second + rest if f["type"] == "message.removed"]
    assert removed == [first_user["id"], first_answer["id"]]
    assert all(f["roomId"] == room_id for f in second + rest if f["type"] == "message.removed")
    assert rest[-1]["rooms"][0]["messageCount"] == 2

    await client.send({"type": "room.join", "roomId": room_id})
    messages = (await client.receive_until("messages"))[-1]["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "two"), ("assistant", "Echo: two")]
    assert [m["id"] for m in messages][-1] == second[-1]["message"]["id"]
