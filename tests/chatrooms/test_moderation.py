"""Staff moderation: the audited services, what hidden messages and locked rooms mean everywhere, the
admin's moderation tools and the live moderation page."""
from __future__ import annotations

import re

import pytest
from channels.db import database_sync_to_async
from django.test import Client
from django.urls import reverse

from chatrooms import selectors, services
from chatrooms.models import Attachment, AuditLogEntry, Message, PendingToolCall, Room
from chatrooms.scripted_model_server import ScriptedReply
from chatrooms.services import ActionRefused
from streaming.models import Stream, StreamChunk
from tests.factories import add_member, make_room, make_user

LOCKED = "This room is locked by a moderator."
# A process's first answer imports litellm, which takes seconds, and more on a busy machine.
LITELLM_FIRST_USE = 30


def make_staff(username: str = "mod"):
    user = make_user(username)
    user.is_staff = user.is_superuser = True
    user.save(update_fields=["is_staff", "is_superuser"])
    return user


def say(room: Room, author, text: str, role: str = "user") -> Message:
    return Message.objects.create(room=room, role=role, author=author if role == "user" else None, content=text,
                                  parts=[{"type": "text", "text": text}])


def live_stream_in(room: Room, user) -> services.ReplyStart:
    """A room answering now (its stream and placeholder), without a model: nothing runs it."""
    return services.chat_send(user=user, room_id=room.pk, request_id="live", text="question")


def audit_rows() -> list[tuple[str, str, str, str]]:
    return list(AuditLogEntry.objects.order_by("id").values_list("actor_username", "action", "object_type", "object_id"))


# -- services -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_moderation_service_refuses_anyone_but_staff_and_changes_nothing():
    owner = make_user("owner")
    room = make_room(owner)
    message = say(room, owner, "hello")
    start = live_stream_in(make_room(owner, "Busy"), owner)
    calls = [
        lambda: services.room_lock(staff=owner, room_id=room.pk),
        lambda: services.room_unlock(staff=owner, room_id=room.pk),
        lambda: services.room_clear_by_staff(staff=owner, room_id=room.pk),
        lambda: services.rooms_lock(staff=owner, room_ids=[room.pk]),
        lambda: services.rooms_clear_by_staff(staff=owner, room_ids=[room.pk]),
        lambda: services.rooms_export_by_staff(staff=owner, room_ids=[room.pk]),
        lambda: services.message_hide(staff=owner, message_ids=[message.pk]),
        lambda: services.message_unhide(staff=owner, message_ids=[message.pk]),
        lambda: services.stream_abort_by_staff(staff=owner, stream_id=start.stream_id),
    ]
    for call in calls:
        with pytest.raises(ActionRefused) as refused:
            call()
        assert refused.value.code == "forbidden"
    room.refresh_from_db()
    message.refresh_from_db()
    assert room.locked_at is None and message.hidden_at is None and Message.objects.filter(room=room).count() == 1
    assert Stream.objects.get(pk=start.stream_id).cancel_requested is False
    assert AuditLogEntry.objects.count() == 0


@pytest.mark.django_db
def test_each_service_writes_its_audit_rows_only_for_what_it_changed():
    staff, owner = make_staff(), make_user("owner")
    room = make_room(owner, "Town square")
    first, second = say(room, owner, "one"), say(room, owner, "two")
    start = live_stream_in(make_room(owner, "Busy"), owner)

    assert services.room_lock(staff=staff, room_id=room.pk).locked_at is not None
    services.room_lock(staff=staff, room_id=room.pk)  # locked already: nothing to write
    assert services.room_unlock(staff=staff, room_id=room.pk).locked_at is None
    assert [m.pk for m in services.message_hide(staff=staff, message_ids=[first.pk, second.pk, "nope"])] == [
        first.pk, second.pk]
    assert services.message_hide(staff=staff, message_ids=[first.pk]) == []
    assert [m.pk for m in services.message_unhide(staff=staff, message_ids=[second.pk])] == [second.pk]
    assert services.stream_abort_by_staff(staff=staff, stream_id=start.stream_id) is True
    assert services.stream_abort_by_staff(staff=staff, stream_id="not-a-uuid") is False
    assert services.room_clear_by_staff(staff=staff, room_id=room.pk).pk == room.pk

    assert audit_rows() == [
        ("mod", "room.lock", "room", str(room.pk)),
        ("mod", "room.unlock", "room", str(room.pk)),
        ("mod", "message.hide", "message", str(first.pk)),
        ("mod", "message.hide", "message", str(second.pk)),
        ("mod", "message.unhide", "message", str(second.pk)),
        ("mod", "stream.abort", "stream", start.stream_id),
        ("mod", "room.clear", "room", str(room.pk)),
    ]
    clear = AuditLogEntry.objects.get(action="room.clear")
    assert clear.object_repr == "Town square" and clear.details == {"messagesDeleted": 2}  # the hidden one too
    assert AuditLogEntry.objects.get(action="stream.abort").details == {"key": f"room:{start.room_id}",
                                                                        "requestId": "live"}
    assert Stream.objects.get(pk=start.stream_id).cancel_requested is True
    with pytest.raises(ActionRefused) as refused:
        services.room_lock(staff=staff, room_id=987654)
    assert refused.value.code == "not_found"


@pytest.mark.django_db
def test_bulk_services_use_a_fixed_number_of_queries(django_assert_max_num_queries):
    staff, owner, member = make_staff(), make_user("owner"), make_user("member")
    rooms = [make_room(owner, f"r{i}") for i in range(20)]
    for room in rooms:
        add_member(room, member)
    messages = [say(rooms[i % 20], owner, f"m{i}") for i in range(200)]
    ids = [m.pk for m in messages]
    with django_assert_max_num_queries(8):
        assert len(services.message_hide(staff=staff, message_ids=ids)) == 200
    with django_assert_max_num_queries(8):
        assert len(services.message_unhide(staff=staff, message_ids=ids)) == 200
    with django_assert_max_num_queries(8):
        assert len(services.rooms_lock(staff=staff, room_ids=[r.pk for r in rooms])) == 20
    with django_assert_max_num_queries(16):
        assert len(services.rooms_clear_by_staff(staff=staff, room_ids=[r.pk for r in rooms])) == 20
    assert Message.objects.count() == 0 and AuditLogEntry.objects.count() == 200 + 200 + 20 + 20


@pytest.mark.django_db
def test_a_room_says_whether_it_is_locked_without_a_query_more(django_assert_num_queries):
    staff, owner = make_staff(), make_user("owner")
    make_room(owner, "open")
    services.room_lock(staff=staff, room_id=make_room(owner, "shut").pk)
    # As for every room list (test_query_counts.py): the rooms, then their members.
    with django_assert_num_queries(2):
        listed = selectors.room_list_for_user(user=owner)
    assert {room["name"]: room["locked"] for room in listed} == {"open": False, "shut": True}


# -- hidden messages ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_hidden_messages_leave_every_history_count_page_api_search_and_export(client):
    staff, owner = make_staff(), make_user("owner")
    room = make_room(owner, "History")
    kept = say(room, owner, "visible words")
    hidden = say(room, owner, "rude words")
    services.message_hide(staff=staff, message_ids=[hidden.pk])
    client.force_login(owner)

    snapshot = selectors.room_snapshot_for_user(user=owner, room_id=str(room.pk), since=None)
    assert [m["id"] for m in snapshot.messages] == [str(kept.pk)]
    assert selectors.room_list_for_user(user=owner)[0]["messageCount"] == 1
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    assert "visible words" in page and "rude words" not in page
    older = client.get(f"/rooms/{room.pk}/messages/?before={hidden.pk + 1}", HTTP_HX_REQUEST="true").content.decode()
    assert "visible words" in older and "rude words" not in older
    assert client.get(f"/rooms/{room.pk}/messages/{hidden.pk}/").status_code == 404
    api = client.get(f"/api/rooms/{room.pk}/messages/").json()
    assert [m["id"] for m in api["messages"]] == [str(kept.pk)]
    assert client.get(f"/api/rooms/{room.pk}/").json()["room"]["messageCount"] == 1
    assert selectors.search_for_user(user=owner, query="rude").messages == []
    assert [m.message_id for m in selectors.search_for_user(user=owner, query="words").messages] == [kept.pk]
    assert selectors.messages_to_reach(room=room, message_id=hidden.pk, context=5) is None
    exported = selectors.room_export_for_user(user=owner, room_id=room.pk)
    assert [m["content"] for m in exported["messages"]] == ["visible words"]
    assert [m.pk for m in selectors.history_for_model(room_id=room.pk, before_message_id=hidden.pk + 1)] == [kept.pk]

    file = Attachment.objects.create(room=room, message=hidden, uploaded_by=owner, filename="a.txt",
                                     media_type="text/plain", size=1, text="x")
    assert client.get(f"/attachments/{file.pk}/").status_code == 404
    rude_answer = say(room, owner, "rude answer", role="assistant")
    services.message_hide(staff=staff, message_ids=[rude_answer.pk])
    with pytest.raises(ActionRefused) as refused:
        services.message_feedback_set(user=owner, message_id=rude_answer.pk, rating="up")
    assert refused.value.code == "not_found"

    services.message_unhide(staff=staff, message_ids=[hidden.pk])
    assert "rude words" in client.get(f"/rooms/{room.pk}/").content.decode()
    assert client.get(f"/attachments/{file.pk}/").status_code == 200


@pytest.mark.django_db
def test_a_hidden_message_can_be_neither_edited_nor_answered_again():
    staff, owner = make_staff(), make_user("owner")
    room = make_room(owner)
    question = say(room, owner, "first question")
    say(room, owner, "first answer", role="assistant")
    hidden = say(room, owner, "hidden question")
    services.message_hide(staff=staff, message_ids=[hidden.pk])
    with pytest.raises(ActionRefused) as refused:
        services.chat_edit(user=owner, room_id=room.pk, message_id=str(hidden.pk), text="x", request_id="e")
    assert refused.value.code == "not_found"
    start = services.chat_regenerate(user=owner, room_id=room.pk, request_id="again")
    # The answer to the last visible question went; the hidden message stays, hidden, for the record.
    kept = [(m.pk, m.hidden_at is None) for m in Message.objects.filter(room=room).order_by("id")]
    assert kept == [(question.pk, True), (hidden.pk, False), (start.message_id, True)]


@pytest.mark.django_db(transaction=True)
async def test_hidden_messages_never_reach_the_model(scripted_model, connect):
    staff, owner = await database_sync_to_async(make_staff)(), await database_sync_to_async(make_user)("owner")
    room = await database_sync_to_async(make_room)(owner)
    client = await connect(owner)
    await client.send({"type": "room.join", "roomId": str(room.pk)})
    await client.receive_until("messages")
    await client.send({"type": "chat.send", "requestId": "q1", "text": "my secret plan"})
    first = await client.receive_until("stream.done", timeout=LITELLM_FIRST_USE)
    secret = next(f["message"]["id"] for f in first if f["type"] == "message.created")
    await database_sync_to_async(services.message_hide)(staff=staff, message_ids=[secret])
    await client.send({"type": "chat.send", "requestId": "q2", "text": "what next?"})
    await client.receive_until("stream.done", requestId="q2")
    sent = scripted_model.requests[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["what next?"]
    # Only what staff hid is left out: the answer to it was not hidden.
    assert [m["content"] for m in sent if m["role"] == "assistant"] == ["Echo: my secret plan"]


# -- live viewers -------------------------------------------------------------------------------


async def joined_viewer(connect, user, room: Room):
    client = await connect(user)
    await client.send({"type": "room.join", "roomId": str(room.pk)})
    joined = (await client.receive_until("messages"))[-1]
    return client, joined


@pytest.mark.django_db(transaction=True)
async def test_hide_and_unhide_reach_the_rooms_viewers_live(connect):
    staff, owner, member = [await database_sync_to_async(f)(n) for f, n in
                            ((make_staff, "mod"), (make_user, "owner"), (make_user, "member"))]
    room = await database_sync_to_async(make_room)(owner)
    await database_sync_to_async(add_member)(room, member)
    message = await database_sync_to_async(say)(room, owner, "regrettable")
    viewer, joined = await joined_viewer(connect, member, room)
    assert [m["id"] for m in joined["messages"]] == [str(message.pk)]

    await database_sync_to_async(services.message_hide)(staff=staff, message_ids=[message.pk])
    removed = (await viewer.receive_until("message.removed"))[-1]
    assert removed == {"type": "message.removed", "roomId": str(room.pk), "messageId": str(message.pk)}
    counts = (await viewer.receive_until("rooms"))[-1]
    assert counts["rooms"][0]["messageCount"] == 0

    # The viewer had been sent this message when it joined; it comes back all the same.
    await database_sync_to_async(services.message_unhide)(staff=staff, message_ids=[message.pk])
    created = (await viewer.receive_until("message.created"))[-1]
    assert created["message"]["id"] == str(message.pk) and created["message"]["content"] == "regrettable"
    assert (await viewer.receive_until("rooms"))[-1]["rooms"][0]["messageCount"] == 1

    # A viewer who joins while it is hidden never gets it.
    await database_sync_to_async(services.message_hide)(staff=staff, message_ids=[message.pk])
    late, late_join = await joined_viewer(connect, owner, room)
    assert late_join["messages"] == []


@pytest.mark.django_db(transaction=True)
async def test_lock_and_unlock_reach_every_viewer_in_rooms(connect):
    staff, owner = await database_sync_to_async(make_staff)(), await database_sync_to_async(make_user)("owner")
    room = await database_sync_to_async(make_room)(owner)
    viewer, _ = await joined_viewer(connect, owner, room)
    await database_sync_to_async(services.room_lock)(staff=staff, room_id=room.pk)
    assert (await viewer.receive_until("rooms"))[-1]["rooms"][0]["locked"] is True
    await database_sync_to_async(services.room_unlock)(staff=staff, room_id=room.pk)
    assert (await viewer.receive_until("rooms"))[-1]["rooms"][0]["locked"] is False


@pytest.mark.django_db(transaction=True)
async def test_staff_clear_reaches_the_viewers(connect):
    staff, owner = await database_sync_to_async(make_staff)(), await database_sync_to_async(make_user)("owner")
    room = await database_sync_to_async(make_room)(owner)
    await database_sync_to_async(say)(room, owner, "soon gone")
    viewer, _ = await joined_viewer(connect, owner, room)
    await database_sync_to_async(services.room_clear_by_staff)(staff=staff, room_id=room.pk)
    assert (await viewer.receive_until("room.cleared"))[-1] == {"type": "room.cleared", "roomId": str(room.pk)}
    assert (await viewer.receive_until("rooms"))[-1]["rooms"][0]["messageCount"] == 0


@pytest.mark.django_db(transaction=True)
async def test_abort_stops_a_live_answer_which_ends_aborted(scripted_model, connect):
    staff, owner = await database_sync_to_async(make_staff)(), await database_sync_to_async(make_user)("owner")
    room = await database_sync_to_async(make_room)(owner)
    viewer, _ = await joined_viewer(connect, owner, room)
    scripted_model.enqueue(ScriptedReply(tokens=["Partial", " answer"], hold_open=True))
    await viewer.send({"type": "chat.send", "requestId": "q1", "text": "go on forever"})
    frames = await viewer.receive_until("stream.chunk", timeout=LITELLM_FIRST_USE)
    stream_id = next(f["streamId"] for f in frames if f["type"] == "stream.start")
    assert await database_sync_to_async(services.stream_abort_by_staff)(staff=staff, stream_id=stream_id) is True
    done = (await viewer.receive_until("stream.done"))[-1]
    assert done["status"] == "aborted" and done["streamId"] == stream_id
    stored = await database_sync_to_async(Stream.objects.get)(pk=stream_id)
    assert stored.status == "aborted"
    rows = await database_sync_to_async(audit_rows)()
    assert rows == [("mod", "stream.abort", "stream", stream_id)]


# -- locked rooms -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_locked_room_refuses_every_write_frame_and_changes_nothing(connect):
    def set_up():
        staff, owner = make_staff(), make_user("owner")
        room = make_room(owner, "Locked")
        question = say(room, owner, "question")
        say(room, owner, "answer", role="assistant")
        start = live_stream_in(room, owner)  # a live answer waiting for a person, as a tool would
        for call_id, kind in (("call-approval", "approval"), ("call-client", "client")):
            PendingToolCall.objects.create(room=room, stream_id=start.stream_id, tool_call_id=call_id,
                                           tool_name="x", kind=kind)
        services.room_lock(staff=staff, room_id=room.pk)
        return owner, room, question

    def state(room: Room):
        room.refresh_from_db()
        return (room.name, room.model, room.system_prompt, list(Message.objects.filter(room=room).values_list(
            "pk", "content", "status")), list(PendingToolCall.objects.values_list("state", flat=True)))

    owner, room, question = await database_sync_to_async(set_up)()
    before = await database_sync_to_async(state)(room)
    client, joined = await joined_viewer(connect, owner, room)  # joining and reading still work
    assert len(joined["messages"]) == 3
    room_id = str(room.pk)
    frames = [
        {"type": "chat.send", "requestId": "s", "text": "hi", "roomId": room_id},
        {"type": "chat.regenerate", "requestId": "r", "roomId": room_id},
        {"type": "chat.edit", "requestId": "e", "messageId": str(question.pk), "text": "changed"},
        {"type": "tool.approval", "requestId": "live", "toolCallId": "call-approval", "approved": True},
        {"type": "tool.result", "requestId": "live", "toolCallId": "call-client", "output": {"ok": 1}},
        {"type": "room.rename", "roomId": room_id, "name": "Renamed"},
        {"type": "room.configure", "roomId": room_id, "systemPrompt": "be rude"},
        {"type": "room.clear", "roomId": room_id},
    ]
    for number, frame in enumerate(frames):
        await client.send({**frame, "ref": f"w{number}"})
        answer = (await client.receive_until("error"))[-1]
        assert (answer["code"], answer["message"], answer["ref"]) == ("forbidden", LOCKED, f"w{number}"), frame
    assert await database_sync_to_async(state)(room) == before
    await client.send({"type": "room.join", "roomId": room_id})
    assert len((await client.receive_until("messages"))[-1]["messages"]) == 3


@pytest.mark.django_db
def test_the_room_page_says_locked_and_its_forms_are_refused(client):
    staff, owner = make_staff(), make_user("owner")
    room = make_room(owner, "Quiet")
    client.force_login(owner)
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    assert re.search(r'id="room-locked"[^>]*hidden', page)
    services.room_lock(staff=staff, room_id=room.pk)
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    assert "Locked" in page and not re.search(r'id="room-locked"[^>]*hidden', page)
    assert re.search(r'<textarea id="composer-text"[^>]*disabled', page)
    refused = client.post(f"/rooms/{room.pk}/rename/", {"name": "New"})
    assert refused.status_code == 403 and refused.content.decode() == LOCKED
    assert client.post(f"/rooms/{room.pk}/clear/").status_code == 403
    assert Room.objects.get(pk=room.pk).name == "Quiet"


# -- the admin ----------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client):
    staff = make_staff()
    client.force_login(staff)
    client.staff = staff
    return client


def many_rooms(owner, count: int) -> list[Room]:
    Room.objects.bulk_create([Room(owner=owner, name=f"room {i}") for i in range(count)])
    return list(Room.objects.filter(owner=owner).order_by("id"))


def admin_action(client, model: str, action: str, ids: list, **extra):
    return client.post(reverse(f"admin:{model}_changelist"),
                       {"action": action, "_selected_action": [str(i) for i in ids], **extra})


@pytest.mark.django_db
def test_the_room_changelist_shows_counts_flags_and_filters_in_a_fixed_number_of_queries(
    staff_client, django_assert_max_num_queries
):
    owner, member = make_user("owner"), make_user("member")
    rooms = many_rooms(owner, 200)
    for room in rooms[:3]:
        add_member(room, member)
        say(room, owner, "hi")
    live_stream_in(rooms[0], owner)
    services.rooms_lock(staff=staff_client.staff, room_ids=[rooms[1].pk])
    url = reverse("admin:chatrooms_room_changelist")
    with django_assert_max_num_queries(12):
        page = staff_client.get(url, {"all": ""}).content.decode()  # ?all: every row on one page
    assert page.count('class="field-name"') == 200
    assert 'value="lock_rooms"' in page and 'value="delete_selected"' not in page  # only audited actions
    with django_assert_max_num_queries(12):
        locked = staff_client.get(url, {"locked": "yes"}).content.decode()
    assert "room 1<" in locked and "room 2<" not in locked
    streaming = staff_client.get(url, {"streaming": "yes"}).content.decode()
    assert "room 0<" in streaming and "room 1<" not in streaming
    assert staff_client.get(url, {"q": "owner", "all": ""}).content.decode().count('class="field-name"') == 200
    first = staff_client.get(url, {"q": "room 0"}).content.decode()
    # room 0: its member, two messages (the live placeholder is not counted yet), answering, open.
    row = re.search(r'room 0</a>.*?</tr>', first, re.S).group(0)
    assert re.findall(r'class="field-(?:member_count|message_count)">(\d+)<', row) == ["1", "2"]
    assert 'field-streaming"><img src="/static/admin/img/icon-yes.svg"' in row
    assert 'field-locked"><img src="/static/admin/img/icon-no.svg"' in row


@pytest.mark.django_db
def test_room_actions_lock_unlock_clear_and_export_200_rooms_through_the_services(
    staff_client, django_assert_max_num_queries
):
    owner = make_user("owner")
    rooms = many_rooms(owner, 200)
    for room in rooms[:5]:
        say(room, owner, f"words in {room.name}")
    hidden = say(rooms[0], owner, "hidden words")
    services.message_hide(staff=staff_client.staff, message_ids=[hidden.pk])
    ids = [room.pk for room in rooms]
    with django_assert_max_num_queries(20):
        answer = admin_action(staff_client, "chatrooms_room", "lock_rooms", ids)
    assert answer.status_code == 302 and Room.objects.filter(locked_at__isnull=False).count() == 200
    with django_assert_max_num_queries(20):
        download = admin_action(staff_client, "chatrooms_room", "export_transcripts", ids)
    assert download["Content-Disposition"] == 'attachment; filename="transcripts.md"'
    text = download.content.decode()
    assert text.count("\n# room ") + text.startswith("# room ") == 200
    assert "words in room 4" in text and "hidden words" not in text
    single = admin_action(staff_client, "chatrooms_room", "export_transcripts", [rooms[3].pk])
    assert single["Content-Disposition"] == 'attachment; filename="room-3.md"'
    with django_assert_max_num_queries(20):
        admin_action(staff_client, "chatrooms_room", "unlock_rooms", ids)
    with django_assert_max_num_queries(30):
        admin_action(staff_client, "chatrooms_room", "clear_rooms", ids)
    assert Room.objects.filter(locked_at__isnull=False).count() == 0 and Message.objects.count() == 0
    counts = {action: AuditLogEntry.objects.filter(action=action).count()
              for action in ("room.lock", "room.export", "room.unlock", "room.clear")}
    assert counts == {"room.lock": 200, "room.export": 201, "room.unlock": 200, "room.clear": 200}


@pytest.mark.django_db
def test_the_message_changelist_searches_filters_and_hides_200_at_once(staff_client, django_assert_max_num_queries):
    owner = make_user("owner")
    room = make_room(owner)
    Message.objects.bulk_create([Message(room=room, role="user", author=owner, content=f"note {i}") for i in range(200)])
    ids = list(Message.objects.values_list("pk", flat=True))
    url = reverse("admin:chatrooms_message_changelist")
    with django_assert_max_num_queries(12):
        page = staff_client.get(url, {"all": ""}).content.decode()
    assert page.count('class="field-excerpt"') == 200
    assert staff_client.get(url, {"q": "note 199"}).content.decode().count('class="field-excerpt"') == 1
    with django_assert_max_num_queries(20):
        admin_action(staff_client, "chatrooms_message", "hide_messages", ids)
    assert Message.objects.filter(hidden_at__isnull=False, hidden_by=staff_client.staff).count() == 200
    assert AuditLogEntry.objects.filter(action="message.hide").count() == 200
    with django_assert_max_num_queries(12):
        hidden = staff_client.get(url, {"hidden": "yes", "all": ""}).content.decode()
    assert hidden.count('class="field-excerpt"') == 200  # staff still see them
    with django_assert_max_num_queries(20):
        admin_action(staff_client, "chatrooms_message", "unhide_messages", ids[:50])
    assert Message.objects.filter(hidden_at__isnull=True).count() == 50
    assert staff_client.get(url, {"hidden": "no"}).content.decode().count('class="field-excerpt"') == 50


@pytest.mark.django_db
def test_streams_are_read_only_with_chunk_counts_and_live_ones_can_be_aborted(
    staff_client, django_assert_max_num_queries
):
    owner = make_user("owner")
    Stream.objects.bulk_create([Stream(key=f"room:{i}", request_id=f"q{i}", status="complete") for i in range(199)])
    start = live_stream_in(make_room(owner), owner)
    StreamChunk.objects.bulk_create([StreamChunk(stream_id=start.stream_id, index=i, body='{"type":"x"}')
                                     for i in range(7)])
    url = reverse("admin:streaming_stream_changelist")
    with django_assert_max_num_queries(12):
        page = staff_client.get(url, {"all": ""}).content.decode()
    assert page.count('class="field-chunk_count"') == 200
    assert '<td class="field-chunk_count">7</td>' in page
    detail = staff_client.get(reverse("admin:streaming_stream_change", args=[start.stream_id])).content.decode()
    link = re.search(r'href="([^"]+)">7 chunks, in order', detail).group(1).replace("&amp;", "&")
    assert staff_client.get(link).content.decode().count('class="field-index"') == 7
    assert staff_client.get(reverse("admin:streaming_stream_add")).status_code == 403
    with django_assert_max_num_queries(20):
        admin_action(staff_client, "streaming_stream", "abort_streams", list(Stream.objects.values_list("pk", flat=True)))
    assert list(Stream.objects.filter(cancel_requested=True).values_list("pk", flat=True)) == [
        Stream.objects.get(pk=start.stream_id).pk]
    assert audit_rows() == [("mod", "stream.abort", "stream", start.stream_id)]


@pytest.mark.django_db
def test_the_audit_log_is_listed_searched_and_filtered_but_never_changed(staff_client, django_assert_max_num_queries):
    owner = make_user("owner")
    rooms = many_rooms(owner, 150)
    Room.objects.filter(pk=rooms[42].pk).update(name="Zebra crossing")
    services.rooms_lock(staff=staff_client.staff, room_ids=[r.pk for r in rooms])
    services.room_unlock(staff=staff_client.staff, room_id=rooms[0].pk)
    url = reverse("admin:chatrooms_auditlogentry_changelist")
    with django_assert_max_num_queries(12):
        page = staff_client.get(url, {"all": ""}).content.decode()
    assert page.count('class="field-action"') == 151 and 'name="_selected_action"' not in page
    assert staff_client.get(url, {"action__exact": "room.unlock"}).content.decode().count('class="field-action"') == 1
    found = staff_client.get(url, {"q": "zebra"}).content.decode()
    assert found.count('class="field-action"') == 1 and "Zebra crossing</td>" in found
    entry = AuditLogEntry.objects.first()
    assert staff_client.get(reverse("admin:chatrooms_auditlogentry_add")).status_code == 403
    assert staff_client.post(reverse("admin:chatrooms_auditlogentry_change", args=[entry.pk]),
                             {"action": "forged"}).status_code == 403
    assert staff_client.post(reverse("admin:chatrooms_auditlogentry_delete", args=[entry.pk]),
                             {"post": "yes"}).status_code == 403
    assert AuditLogEntry.objects.filter(action="forged").count() == 0 and AuditLogEntry.objects.count() == 151


@pytest.mark.django_db
def test_the_admin_index_links_to_the_moderation_page_and_people_who_are_not_staff_stay_out(client):
    owner = make_user("owner")
    client.force_login(owner)
    assert client.get(reverse("admin:chatrooms_room_changelist")).status_code == 302
    client.force_login(make_staff())
    assert 'href="/moderation/"' in client.get(reverse("admin:index")).content.decode()


# -- the moderation page ------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_moderation_page_shows_live_streams_and_the_newest_messages(staff_client, django_assert_max_num_queries):
    owner = make_user("owner")
    room = make_room(owner, "Lively")
    for i in range(60):
        say(room, owner, f"message number {i}")
    live_stream_in(make_room(owner, "Busy"), owner)
    with django_assert_max_num_queries(8):
        page = staff_client.get("/moderation/").content.decode()
    assert "Busy" in page and "owner" in page and 'hx-trigger="every 3s"' in page
    assert "message number 59" in page and "message number 9<" not in page  # the newest 50 (and the question)
    streams = staff_client.get("/moderation/streams/", HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in streams and "Busy" in streams and "Abort" in streams
    recent = staff_client.get("/moderation/messages/", HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in recent and "message number 59" in recent


@pytest.mark.django_db
def test_the_moderation_buttons_hide_unhide_and_abort_through_the_audited_services(staff_client):
    owner = make_user("owner")
    message = say(make_room(owner), owner, "spam spam")
    start = live_stream_in(make_room(owner, "Busy"), owner)

    hidden = staff_client.post(f"/moderation/messages/{message.pk}/hide/", HTTP_HX_REQUEST="true")
    assert hidden.status_code == 200 and "<html" not in hidden.content.decode()
    assert f'aria-label="Unhide message {message.pk}"' in hidden.content.decode()
    message.refresh_from_db()
    assert message.hidden_by == staff_client.staff
    shown = staff_client.post(f"/moderation/messages/{message.pk}/unhide/")  # without JavaScript
    assert shown.status_code == 302 and shown.url == "/moderation/"
    aborted = staff_client.post(f"/moderation/streams/{start.stream_id}/abort/", HTTP_HX_REQUEST="true")
    assert "stopping…" in aborted.content.decode()
    assert [row[1] for row in audit_rows()] == ["message.hide", "message.unhide", "stream.abort"]
    assert staff_client.get(f"/moderation/messages/{message.pk}/hide/").status_code == 405


@pytest.mark.django_db
def test_the_moderation_page_sends_everyone_else_to_the_admin_login_and_needs_csrf(client):
    owner = make_user("owner")
    message = say(make_room(owner), owner, "keep me")
    start = live_stream_in(make_room(owner, "Busy"), owner)
    for who in (None, owner):
        if who is not None:
            client.force_login(who)
        for method, url in (("get", "/moderation/"), ("get", "/moderation/streams/"), ("get", "/moderation/messages/"),
                            ("post", f"/moderation/messages/{message.pk}/hide/"),
                            ("post", f"/moderation/streams/{start.stream_id}/abort/")):
            answer = getattr(client, method)(url)
            assert answer.status_code == 302 and answer.url.startswith("/admin/login/?next="), (who, url)
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(make_staff())
    assert strict.post(f"/moderation/messages/{message.pk}/hide/").status_code == 403
    message.refresh_from_db()
    assert message.hidden_at is None and AuditLogEntry.objects.count() == 0
    assert Stream.objects.get(pk=start.stream_id).cancel_requested is False
