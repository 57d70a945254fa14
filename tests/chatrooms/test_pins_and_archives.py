"""Pin and archive: each user's own marks on the rooms they see, through the services, the socket and the pages."""
from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from chatrooms import selectors, services
from chatrooms.models import RoomPreference
from chatrooms.selectors import RoomNotFound
from tests.factories import add_member, make_room, make_user

# -- services ------------------------------------------------------------------------------------


def marks(user) -> dict[str, tuple[bool, bool]]:
    return {r["name"]: (r["pinned"], r["archived"]) for r in selectors.room_list_for_user(user=user)}


@pytest.mark.django_db
def test_pins_and_archives_are_each_user_s_own():
    alice, bob = make_user("alice"), make_user("bob")
    room = make_room(alice, "Team")
    add_member(room, bob)
    services.room_pin(user=bob, room_id=room.pk, pinned=True)
    services.room_archive(user=alice, room_id=room.pk, archived=True)
    assert marks(bob) == {"Team": (True, False)} and marks(alice) == {"Team": (False, True)}
    assert selectors.room_get_for_user(user=bob, room_id=room.pk).pinned_by_viewer is True

    services.room_pin(user=bob, room_id=room.pk, pinned=False)
    services.room_archive(user=alice, room_id=room.pk, archived=False)
    assert marks(bob) == {"Team": (False, False)} == marks(alice)


@pytest.mark.django_db
def test_marking_twice_keeps_the_first_time_and_a_stranger_finds_nothing():
    alice, carol = make_user("alice"), make_user("carol")
    room = make_room(alice, "Team")
    services.room_pin(user=alice, room_id=room.pk, pinned=True)
    first = RoomPreference.objects.get().pinned_at
    services.room_pin(user=alice, room_id=room.pk, pinned=True)
    assert RoomPreference.objects.get().pinned_at == first
    for mark in (lambda: services.room_pin(user=carol, room_id=room.pk, pinned=True),
                 lambda: services.room_archive(user=carol, room_id=room.pk, archived=True)):
        with pytest.raises(RoomNotFound):
            mark()
    assert RoomPreference.objects.count() == 1


@pytest.mark.django_db
def test_the_room_list_keeps_every_room_by_activity_and_the_sidebar_puts_pins_first_and_archives_apart():
    sam = make_user("sam")
    rooms = {name: make_room(sam, name) for name in ("Alpha", "Beta", "Gamma", "Delta")}
    services.room_pin(user=sam, room_id=rooms["Alpha"].pk, pinned=True)
    services.room_archive(user=sam, room_id=rooms["Gamma"].pk, archived=True)
    assert [r["name"] for r in selectors.room_list_for_user(user=sam)] == ["Delta", "Gamma", "Beta", "Alpha"]
    sidebar = selectors.room_sidebar_for_user(user=sam)
    assert [r["name"] for r in sidebar.rooms] == ["Alpha", "Delta", "Beta"]
    assert [r["name"] for r in sidebar.archived] == ["Gamma"]


# -- the socket ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_pin_and_archive_reach_every_socket_of_that_user_and_no_one_else(connect):
    alice = await database_sync_to_async(make_user)("alice")
    bob = await database_sync_to_async(make_user)("bob")
    room = await database_sync_to_async(make_room)(alice, "Team")
    await database_sync_to_async(add_member)(room, bob)
    room_id = str(room.pk)
    alice_tabs, bob_tab = [await connect(alice), await connect(alice)], await connect(bob)

    await alice_tabs[0].send({"type": "room.pin", "roomId": room_id, "pinned": True, "ref": "p"})
    assert (await alice_tabs[0].receive_until("ack"))[-1]["ref"] == "p"
    for tab in alice_tabs:
        room_dict = (await tab.receive_until("rooms"))[-1]["rooms"][0]
        assert (room_dict["pinned"], room_dict["archived"]) == (True, False)
    assert await bob_tab.nothing_more()

    await bob_tab.send({"type": "room.archive", "roomId": room_id, "archived": True, "ref": "a"})
    assert (await bob_tab.receive_until("ack"))[-1]["ref"] == "a"
    room_dict = (await bob_tab.receive_until("rooms"))[-1]["rooms"][0]
    assert (room_dict["id"], room_dict["pinned"], room_dict["archived"]) == (room_id, False, True)
    for tab in alice_tabs:
        assert await tab.nothing_more()

    await bob_tab.send({"type": "room.archive", "roomId": room_id, "archived": False})
    await bob_tab.receive_until("ack")
    assert (await bob_tab.receive_until("rooms"))[-1]["rooms"][0]["archived"] is False


@pytest.mark.django_db(transaction=True)
async def test_pin_and_archive_frames_are_checked(connect):
    alice = await database_sync_to_async(make_user)("alice")
    carol = await database_sync_to_async(make_user)("carol")
    room = await database_sync_to_async(make_room)(alice, "Team")
    room_id = str(room.pk)
    alice_tab, carol_tab = await connect(alice), await connect(carol)
    cases = [
        (alice_tab, {"type": "room.pin", "roomId": room_id}, "bad_request"),
        (alice_tab, {"type": "room.pin", "roomId": room_id, "pinned": "yes"}, "bad_request"),
        (alice_tab, {"type": "room.archive", "roomId": room_id, "archived": 1}, "bad_request"),
        (alice_tab, {"type": "room.archive", "archived": True}, "bad_request"),
        (alice_tab, {"type": "room.pin", "roomId": "nope", "pinned": True}, "not_found"),
        (carol_tab, {"type": "room.pin", "roomId": room_id, "pinned": True}, "not_found"),
        (carol_tab, {"type": "room.archive", "roomId": room_id, "archived": True}, "not_found"),
    ]
    for index, (client, frame, code) in enumerate(cases):
        await client.send({**frame, "ref": f"r{index}"})
        error = (await client.receive_until("error"))[-1]
        assert (error["code"], error["ref"]) == (code, f"r{index}"), (frame, error)
    assert await alice_tab.nothing_more() and await carol_tab.nothing_more()
    assert not await database_sync_to_async(RoomPreference.objects.exists)()


# -- the pages -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_sidebar_shows_pins_first_and_archived_rooms_apart_and_the_forms_work_without_javascript(client):
    sam = make_user("sam")
    client.force_login(sam)
    alpha, beta, gamma = (make_room(sam, name) for name in ("Alpha", "Beta", "Gamma"))

    response = client.post(f"/rooms/{alpha.pk}/pin/", {"pinned": "true"})
    assert response.status_code == 302 and response.url == f"/rooms/{alpha.pk}/"
    client.post(f"/rooms/{gamma.pk}/archive/", {"archived": "true"})
    page = client.get(f"/rooms/{beta.pk}/").content.decode()
    main = page[page.index('id="room-list"'):page.index('id="archived-rooms"')]
    archived = page[page.index('id="archived-rooms"'):page.index("</nav>")]
    assert main.index(">Alpha<") < main.index(">Beta<") and ">Gamma<" not in main
    assert ">Gamma<" in archived and f'action="/rooms/{gamma.pk}/archive/"' in archived
    assert 'value="false"' in archived and "Restore<span" in archived
    assert "Pin room" in page and "Archive room" in page
    assert "Unpin room" in client.get(f"/rooms/{alpha.pk}/").content.decode()
    assert "Restore room" in client.get(f"/rooms/{gamma.pk}/").content.decode()

    client.post(f"/rooms/{gamma.pk}/archive/", {"archived": "false"})
    client.post(f"/rooms/{alpha.pk}/pin/", {"pinned": "false"})
    assert marks(sam) == {"Alpha": (False, False), "Beta": (False, False), "Gamma": (False, False)}


@pytest.mark.django_db
def test_home_skips_archived_rooms_and_strangers_cannot_mark(client):
    sam = make_user("sam")
    client.force_login(sam)
    older, newest = make_room(sam, "Older"), make_room(sam, "Newest")
    services.room_archive(user=sam, room_id=newest.pk, archived=True)
    assert client.get("/").url == f"/rooms/{older.pk}/"
    services.room_archive(user=sam, room_id=older.pk, archived=True)
    assert client.get("/").url == f"/rooms/{newest.pk}/", "all archived: still somewhere to go"

    client.force_login(make_user("carol"))
    assert client.post(f"/rooms/{older.pk}/pin/", {"pinned": "true"}).status_code == 404
    assert client.post(f"/rooms/{older.pk}/archive/", {"archived": "false"}).status_code == 404
