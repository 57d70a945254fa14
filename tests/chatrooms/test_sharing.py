"""Sharing a room: the owner adds and removes members by username, through the services, the socket and the pages."""
from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from chatrooms import selectors, services
from chatrooms.models import Membership, RoomPreference
from chatrooms.scripted_model_server import ScriptedReply
from chatrooms.selectors import RoomNotFound
from chatrooms.services import ActionRefused
from tests.chatrooms.test_chat_flow import text_of
from tests.factories import add_member, make_room, make_user

# -- services ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_owner_shares_and_unshares_and_the_member_sees_the_room_only_meanwhile():
    alice, bob = make_user("alice"), make_user("bob")
    room = make_room(alice, "Team")
    with pytest.raises(RoomNotFound):
        selectors.room_get_for_user(user=bob, room_id=room.pk)

    services.room_share(user=alice, room_id=room.pk, username=" bob ")
    assert selectors.room_get_for_user(user=bob, room_id=room.pk).pk == room.pk
    assert [r["members"] for r in selectors.room_list_for_user(user=bob)] == [["bob"]]
    assert selectors.room_member_names(room=room) == ["bob"]

    services.room_archive(user=bob, room_id=room.pk, archived=True)
    services.room_unshare(user=alice, room_id=room.pk, username="bob")
    with pytest.raises(RoomNotFound):
        selectors.room_get_for_user(user=bob, room_id=room.pk)
    assert selectors.room_list_for_user(user=bob) == []
    assert not RoomPreference.objects.filter(user=bob).exists(), "their own marks on it went with them"


@pytest.mark.django_db
def test_members_are_listed_sorted_with_the_owner_apart():
    alice = make_user("alice")
    room = make_room(alice, "Team")
    for name in ("carol", "bob", "dave"):
        services.room_share(user=alice, room_id=room.pk, username=make_user(name).username)
    listed = selectors.room_list_for_user(user=alice)[0]
    assert listed["owner"] == "alice" and listed["members"] == ["bob", "carol", "dave"]


@pytest.mark.django_db
def test_only_the_owner_shares_a_member_is_forbidden_and_a_stranger_finds_nothing():
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    room = make_room(alice, "Team")
    add_member(room, bob)
    for share in (services.room_share, services.room_unshare):
        with pytest.raises(ActionRefused) as refused:
            share(user=bob, room_id=room.pk, username="carol" if share is services.room_share else "bob")
        assert refused.value.code == "forbidden"
        with pytest.raises(RoomNotFound):
            share(user=carol, room_id=room.pk, username="bob")
    # Members chat but do not manage: the owner-only door stays shut for them.
    for manage in (lambda: services.room_rename(user=bob, room_id=room.pk, name="Mine"),
                   lambda: services.room_clear(user=bob, room_id=room.pk),
                   lambda: services.room_delete(user=bob, room_id=room.pk)):
        with pytest.raises(ActionRefused) as refused:
            manage()
        assert refused.value.code == "forbidden"
    assert list(Membership.objects.values_list("user__username", flat=True)) == ["bob"]


@pytest.mark.django_db
@pytest.mark.parametrize(("action", "username", "code", "words"), [
    ("share", "nobody", "not_found", "No user with that name."),
    ("share", "alice", "bad_request", "You own this room already"),
    ("share", "bob", "bad_request", "bob is already a member"),
    ("unshare", "nobody", "not_found", "No user with that name."),
    ("unshare", "carol", "not_found", "carol is not a member"),
    ("unshare", "alice", "not_found", "alice is not a member"),
])
def test_sharing_refuses_what_makes_no_sense_and_changes_nothing(action, username, code, words):
    alice, bob = make_user("alice"), make_user("bob")
    make_user("carol")
    room = make_room(alice, "Team")
    add_member(room, bob)
    with pytest.raises(ActionRefused) as refused:
        getattr(services, f"room_{action}")(user=alice, room_id=room.pk, username=username)
    assert refused.value.code == code and words in refused.value.message
    assert list(Membership.objects.values_list("user__username", flat=True)) == ["bob"]


@pytest.mark.django_db
def test_an_inactive_user_is_not_found():
    alice, bob = make_user("alice"), make_user("bob")
    bob.is_active = False
    bob.save()
    with pytest.raises(ActionRefused) as refused:
        services.room_share(user=alice, room_id=make_room(alice).pk, username="bob")
    assert refused.value.code == "not_found"


# -- the socket ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_new_member_sees_the_room_at_once_joins_it_watches_live_answers_and_chats(scripted_model, connect):
    alice = await database_sync_to_async(make_user)("alice")
    bob = await database_sync_to_async(make_user)("bob")
    carol = await database_sync_to_async(make_user)("carol")
    room = await database_sync_to_async(make_room)(alice, "Team")
    room_id = str(room.pk)
    alice_tab, bob_tab, carol_tab = await connect(alice), await connect(bob), await connect(carol)

    await alice_tab.send({"type": "room.share", "roomId": room_id, "username": "bob", "ref": "s1"})
    assert (await alice_tab.receive_until("ack"))[-1]["ref"] == "s1"
    for client in (alice_tab, bob_tab):
        rooms = (await client.receive_until("rooms"))[-1]["rooms"]
        assert [(r["id"], r["owner"], r["members"]) for r in rooms] == [(room_id, "alice", ["bob"])]
    assert await carol_tab.nothing_more()

    await alice_tab.send({"type": "room.join", "roomId": room_id})
    await alice_tab.receive_until("messages")
    await bob_tab.send({"type": "room.join", "roomId": room_id})
    await bob_tab.receive_until("messages")
    scripted_model.enqueue(ScriptedReply(tokens=[f"w{i} " for i in range(10)], delay=0.01))
    await alice_tab.send({"type": "chat.send", "requestId": "a1", "text": "from alice"})
    frames = await bob_tab.receive_until("stream.done")
    assert [f["type"] for f in frames][:2] == ["message.created", "stream.start"]
    assert text_of(frames) == "".join(f"w{i} " for i in range(10)) == frames[-1]["message"]["content"]

    await bob_tab.send({"type": "chat.send", "requestId": "b1", "text": "from bob"})
    seen = await alice_tab.receive_until("stream.done", requestId="b1")
    created = [f for f in seen if f["type"] == "message.created"]
    assert created[-1]["message"]["author"] == "bob" and created[-1]["message"]["content"] == "from bob"
    assert seen[-1]["status"] == "complete"


@pytest.mark.django_db(transaction=True)
async def test_a_removed_member_loses_the_room_at_once_even_mid_answer(scripted_model, connect):
    alice = await database_sync_to_async(make_user)("alice")
    bob = await database_sync_to_async(make_user)("bob")
    room = await database_sync_to_async(make_room)(alice, "Team")
    own = await database_sync_to_async(make_room)(bob, "Bob's own")
    await database_sync_to_async(add_member)(room, bob)
    room_id = str(room.pk)
    alice_tab, watching, elsewhere = await connect(alice), await connect(bob), await connect(bob)
    for client in (alice_tab, watching):
        await client.send({"type": "room.join", "roomId": room_id})
        await client.receive_until("messages")
    await elsewhere.send({"type": "room.join", "roomId": str(own.pk)})
    await elsewhere.receive_until("messages")

    scripted_model.enqueue(ScriptedReply(tokens=[f"t{i} " for i in range(200)], delay=0.01))
    await alice_tab.send({"type": "chat.send", "requestId": "long", "text": "talk a while"})
    await watching.receive_until_text("t5 ")

    await alice_tab.send({"type": "room.unshare", "roomId": room_id, "username": "bob", "ref": "u1"})
    assert (await alice_tab.receive_until("ack"))[-1]["ref"] == "u1"
    for client in (watching, elsewhere):
        await client.receive_until("room.deleted", roomId=room_id)
        after = await client.receive_until("rooms")
        assert [f["type"] for f in after] == ["rooms"], "nothing of the room after room.deleted"
        assert [r["id"] for r in after[-1]["rooms"]] == [str(own.pk)]
    # The answer goes on for alice; not a frame of it reaches bob.
    await alice_tab.receive_until_text("t60 ")
    assert await watching.nothing_more() and await elsewhere.nothing_more()

    for frame in ({"type": "room.join", "roomId": room_id, "ref": "j"},
                  {"type": "chat.send", "roomId": room_id, "requestId": "b2", "text": "still here?", "ref": "c"},
                  {"type": "room.pin", "roomId": room_id, "pinned": True, "ref": "p"}):
        await watching.send(frame)
        error = (await watching.receive_until("error"))[-1]
        assert (error["code"], error["ref"]) == ("not_found", frame["ref"])
    await alice_tab.receive_until("stream.done", requestId="long")
    messages = await database_sync_to_async(list)(room.messages.values_list("author__username", flat=True))
    assert "bob" not in messages


@pytest.mark.django_db(transaction=True)
async def test_share_frames_are_checked_and_answered_with_the_right_codes(connect):
    alice = await database_sync_to_async(make_user)("alice")
    bob = await database_sync_to_async(make_user)("bob")
    carol = await database_sync_to_async(make_user)("carol")
    room = await database_sync_to_async(make_room)(alice, "Team")
    await database_sync_to_async(add_member)(room, bob)
    room_id = str(room.pk)
    alice_tab, bob_tab, carol_tab = await connect(alice), await connect(bob), await connect(carol)
    cases = [
        (bob_tab, {"type": "room.share", "roomId": room_id, "username": "carol"}, "forbidden"),
        (bob_tab, {"type": "room.unshare", "roomId": room_id, "username": "bob"}, "forbidden"),
        (carol_tab, {"type": "room.share", "roomId": room_id, "username": "carol"}, "not_found"),
        (alice_tab, {"type": "room.share", "roomId": room_id, "username": "nobody"}, "not_found"),
        (alice_tab, {"type": "room.share", "roomId": room_id, "username": "bob"}, "bad_request"),
        (alice_tab, {"type": "room.share", "roomId": room_id, "username": "alice"}, "bad_request"),
        (alice_tab, {"type": "room.unshare", "roomId": room_id, "username": "carol"}, "not_found"),
        (alice_tab, {"type": "room.share", "roomId": room_id}, "bad_request"),
        (alice_tab, {"type": "room.share", "roomId": room_id, "username": "   "}, "bad_request"),
        (alice_tab, {"type": "room.share", "roomId": room_id, "username": 7}, "bad_request"),
        (alice_tab, {"type": "room.share", "roomId": room_id, "username": "x" * 151}, "bad_request"),
        (alice_tab, {"type": "room.unshare", "roomId": "999999", "username": "bob"}, "not_found"),
    ]
    for index, (client, frame, code) in enumerate(cases):
        await client.send({**frame, "ref": f"r{index}"})
        error = (await client.receive_until("error"))[-1]
        assert (error["code"], error["ref"]) == (code, f"r{index}"), (frame, error)
    assert await alice_tab.nothing_more() and await bob_tab.nothing_more() and await carol_tab.nothing_more()
    members = await database_sync_to_async(list)(Membership.objects.values_list("user__username", flat=True))
    assert members == ["bob"]


# -- the pages -----------------------------------------------------------------------------------


@pytest.fixture
def alice(client, db):
    user = make_user("alice")
    client.force_login(user)
    return user


@pytest.mark.django_db
def test_the_room_page_shows_members_owner_first_and_the_owner_s_forms(client, alice):
    room = make_room(alice, "Team")
    for name in ("zed", "bob"):
        add_member(room, make_user(name))
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    members = page[page.index('id="member-list"'):]
    assert members.index(">alice<") < members.index(">bob<") < members.index(">zed<")
    assert f'action="/rooms/{room.pk}/share/"' in page and 'name="username" value="bob"' in page
    partial = client.get(f"/rooms/{room.pk}/members/", HTTP_HX_REQUEST="true").content.decode()
    assert partial.strip().startswith('<div class="room-members"') and "<html" not in partial and ">zed<" in partial

    client.force_login(make_user("bob2"))
    assert client.get(f"/rooms/{room.pk}/members/").status_code == 404
    client.force_login(room.members.get(username="bob"))
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    assert ">alice<" in page and ">zed<" in page
    assert "/share/" not in page and "/unshare/" not in page, "only the owner manages members"


@pytest.mark.django_db
def test_the_share_forms_work_with_htmx_and_without_javascript(client, alice):
    room = make_room(alice, "Team")
    make_user("bob")
    response = client.post(f"/rooms/{room.pk}/share/", {"username": "bob"})
    assert response.status_code == 302 and response.url == f"/rooms/{room.pk}/"
    assert room.members.filter(username="bob").exists()

    response = client.post(f"/rooms/{room.pk}/share/", {"username": "nobody"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 400 and response.content.decode() == "No user with that name."
    response = client.post(f"/rooms/{room.pk}/share/", {"username": ""}, HTTP_HX_REQUEST="true")
    assert response.status_code == 400 and "Username" in response.content.decode()

    response = client.post(f"/rooms/{room.pk}/unshare/", {"username": "bob"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response["HX-Redirect"] == f"/rooms/{room.pk}/"
    assert not room.members.exists()
    assert client.get(f"/rooms/{room.pk}/share/").status_code == 405


@pytest.mark.django_db
def test_a_member_may_not_share_from_the_page_and_a_stranger_finds_no_room(client, alice):
    bob, carol = make_user("bob"), make_user("carol")
    room = make_room(alice, "Team")
    add_member(room, bob)
    client.force_login(bob)
    assert client.post(f"/rooms/{room.pk}/share/", {"username": "carol"}).status_code == 403
    assert client.post(f"/rooms/{room.pk}/unshare/", {"username": "bob"}).status_code == 403
    client.force_login(carol)
    assert client.post(f"/rooms/{room.pk}/share/", {"username": "carol"}).status_code == 404
    assert list(room.members.values_list("username", flat=True)) == ["bob"]
