"""Per-user limits (chatrooms/limits.py): chat frames a minute, live answers at once, rooms an hour and
open sockets. Each refusal is a clear `rate_limited` (or a 429, or a 4429 close) and changes nothing."""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.cache import cache

from chatrooms import limits
from chatrooms.models import Message, Room
from chatrooms.scripted_model_server import ScriptedReply
from streaming.models import Stream
from tests.chatrooms.test_bad_input import assert_nothing_written, db_state, expect_lone_error
from tests.factories import add_member, make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)

# 20 s into a minute (and an hour): every test's attempts fall in one window, whatever the clock says.
MID_WINDOW = 1_800_000_020.0


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    clock = SimpleNamespace(now=MID_WINDOW)
    monkeypatch.setattr(limits, "time", SimpleNamespace(time=lambda: clock.now))
    return clock


async def answered(client: Any, request_id: str) -> list[dict[str, Any]]:
    """Frames up to the answer's `stream.done` and the `rooms` that follows it."""
    frames = await client.receive_until("stream.done", requestId=request_id)
    frames += await client.receive_until("rooms")
    assert [f for f in frames if f["type"] == "error"] == [], frames
    return frames


async def finished_exchange(client: Any, room_id: str, request_id: str, text: str = "hi") -> None:
    await client.send({"type": "chat.send", "roomId": room_id, "requestId": request_id, "text": text})
    await answered(client, request_id)


# -- the counter itself --------------------------------------------------------------------------


def test_a_fixed_window_counts_to_its_limit_then_names_when_to_retry(settings):
    settings.RATE_CHAT_PER_MINUTE = 3
    for _ in range(3):
        limits.count_attempt(limits.CHAT_FRAMES, user_id=7, now=MID_WINDOW)
    with pytest.raises(limits.LimitReached) as refused:
        limits.count_attempt(limits.CHAT_FRAMES, user_id=7, now=MID_WINDOW + 5)
    assert refused.value.retry_after == 35  # the minute ends 40 s after its start + 20 s, 5 s later
    assert refused.value.message == "Too many messages: at most 3 a minute. Try again in 35 s."
    limits.count_attempt(limits.CHAT_FRAMES, user_id=8, now=MID_WINDOW + 5)  # another user: own counter
    limits.count_attempt(limits.CHAT_FRAMES, user_id=7, now=MID_WINDOW + 40)  # the next minute starts again


def test_a_limit_of_zero_is_off(settings):
    settings.ROOMS_PER_HOUR = 0
    for _ in range(100):
        limits.count_attempt(limits.ROOMS_CREATED, user_id=1, now=MID_WINDOW)
    settings.ROOMS_PER_HOUR = 1
    limits.count_attempt(limits.ROOMS_CREATED, user_id=1, now=MID_WINDOW)  # nothing was counted while off


def test_the_hour_window_says_minutes(settings):
    settings.ROOMS_PER_HOUR = 1
    limits.count_attempt(limits.ROOMS_CREATED, user_id=1, now=MID_WINDOW)
    with pytest.raises(limits.LimitReached, match=r"at most 1 an hour\. Try again in \d+ min\."):
        limits.count_attempt(limits.ROOMS_CREATED, user_id=1, now=MID_WINDOW)


# -- chat frames a minute ------------------------------------------------------------------------


async def test_chat_frames_beyond_the_minute_are_rate_limited_and_write_nothing(
    settings, fixed_clock, scripted_model, connect
):
    settings.RATE_CHAT_PER_MINUTE = 3
    alice, bob = await database_sync_to_async(make_user)("alice"), await database_sync_to_async(make_user)("bob")
    room = await database_sync_to_async(make_room)(alice, "Chatty")
    client = await connect(alice)
    await client.send({"type": "room.join", "roomId": str(room.pk)})
    await client.receive_until("messages")
    await finished_exchange(client, str(room.pk), "q1")
    await client.send({"type": "chat.regenerate", "requestId": "q2"})
    await answered(client, "q2")
    first = await database_sync_to_async(Message.objects.filter(room=room, role="user").first)()
    await client.send({"type": "chat.edit", "requestId": "q3", "messageId": str(first.pk), "text": "edited"})
    await answered(client, "q3")

    before = await database_sync_to_async(db_state)()
    for frame in ({"type": "chat.send", "requestId": "q4", "text": "one more"},
                  {"type": "chat.regenerate", "requestId": "q5"},
                  {"type": "chat.edit", "requestId": "q6", "messageId": str(first.pk), "text": "again"}):
        await client.send({**frame, "ref": frame["requestId"]})
        error = await expect_lone_error(client, "rate_limited", frame["requestId"])
        assert error["retryAfter"] == 40 and "at most 3 a minute" in error["message"]
        assert "Try again in 40 s" in error["message"]
    await assert_nothing_written(before)

    # Other frames, and other users, are not held back.
    await client.send({"type": "room.rename", "roomId": str(room.pk), "name": "Still mine", "ref": "r"})
    assert (await client.receive_until("ack"))[-1]["ref"] == "r"
    other = await connect(bob)
    own = await database_sync_to_async(make_room)(bob, "Bob's")
    await finished_exchange(other, str(own.pk), "b1")

    fixed_clock.now += 40  # the next minute
    await finished_exchange(client, str(room.pk), "q7")


# -- live answers at once ------------------------------------------------------------------------


async def test_live_answers_per_user_are_limited_across_rooms(settings, scripted_model, connect):
    settings.STREAMS_PER_USER = 2
    alice, bob = await database_sync_to_async(make_user)("alice"), await database_sync_to_async(make_user)("bob")
    rooms = [await database_sync_to_async(make_room)(alice, f"Room {i}") for i in range(3)]
    shared = await database_sync_to_async(make_room)(bob, "Bob's, shared")
    await database_sync_to_async(add_member)(shared, alice)
    scripted_model.enqueue(*(ScriptedReply(tokens=["a"], hold_open=True) for _ in range(3)))
    client = await connect(alice)
    for index, room in enumerate(rooms[:2]):
        await client.send({"type": "chat.send", "roomId": str(room.pk), "requestId": f"q{index}", "text": "go"})
        await client.receive_until("stream.chunk")

    before = await database_sync_to_async(db_state)(live=True)
    await client.send({"type": "chat.send", "roomId": str(rooms[2].pk), "requestId": "q2", "text": "third",
                       "ref": "third"})
    frames = await client.receive_until("error")
    error = frames[-1]
    assert (error["code"], error["ref"]) == ("rate_limited", "third") and "retryAfter" not in error
    assert error["message"] == "You have 2 answers streaming already; wait for one to finish (or stop one) first."
    # It joined the room (`messages`), and nothing else happened.
    assert "messages" in [f["type"] for f in frames] and not {"message.created", "stream.start"} & {
        f["type"] for f in frames}
    await assert_nothing_written(before, live=True)

    # Bob's answers are his own: he may still start one, in a room alice is in.
    other = await connect(bob)
    await other.send({"type": "chat.send", "roomId": str(shared.pk), "requestId": "b", "text": "mine"})
    await other.receive_until("stream.chunk")

    await client.send({"type": "room.join", "roomId": str(rooms[0].pk)})
    await client.receive_until("stream.replay_complete")
    await client.send({"type": "chat.cancel", "requestId": "q0"})
    await client.receive_until("stream.done", requestId="q0")
    await finished_exchange(client, str(rooms[2].pk), "q3")  # one finished: room for another
    assert await database_sync_to_async(Stream.objects.filter(status="streaming").count)() == 2


def test_the_live_answer_count_follows_who_asked():
    from chatrooms import services
    from chatrooms.selectors import live_answer_count_for_user

    alice, bob = make_user("alice"), make_user("bob")
    mine, shared = make_room(alice, "Mine"), make_room(bob, "Shared")
    add_member(shared, alice)
    services.chat_send(user=alice, room_id=mine.pk, request_id="a", text="go")
    services.chat_send(user=alice, room_id=shared.pk, request_id="b", text="go too")
    assert live_answer_count_for_user(user_id=alice.pk) == 2
    assert live_answer_count_for_user(user_id=bob.pk) == 0


# -- rooms an hour -------------------------------------------------------------------------------


async def test_rooms_an_hour_count_the_socket_and_the_form_together(settings, fixed_clock, connect):
    from django.test import AsyncClient

    settings.ROOMS_PER_HOUR = 3
    alice = await database_sync_to_async(make_user)("alice")
    client = await connect(alice)
    for name in ("One", "Two"):
        await client.send({"type": "room.create", "name": name})
        await client.receive_until("room.created")
        await client.receive_until("rooms")  # the room list follows
    page = AsyncClient()
    await database_sync_to_async(page.force_login)(alice)
    response = await page.post("/rooms/new/", {"name": "Three"})
    assert response.status_code == 302
    assert len((await client.receive_until("rooms"))[-1]["rooms"]) == 3

    before = await database_sync_to_async(db_state)()
    await client.send({"type": "room.create", "name": "Four", "ref": "four"})
    error = await expect_lone_error(client, "rate_limited", "four")
    assert "at most 3 an hour" in error["message"] and error["retryAfter"] == 3580
    response = await page.post("/rooms/new/", {"name": "Five"}, headers={"HX-Request": "true"})
    assert response.status_code == 429 and response["Retry-After"] == "3580"
    assert "Too many new rooms: at most 3 an hour. Try again in 60 min." == response.content.decode()
    await assert_nothing_written(before)
    assert await database_sync_to_async(Room.objects.count)() == 3


# -- sockets -------------------------------------------------------------------------------------


async def test_sockets_beyond_the_limit_are_closed_with_4429_and_closing_one_frees_a_place(settings, connect):
    settings.SOCKETS_PER_USER = 2
    alice, bob = await database_sync_to_async(make_user)("alice"), await database_sync_to_async(make_user)("bob")
    first, _second = await connect(alice), await connect(alice)
    refused = await connect(alice, expect_hello=False)
    assert refused.connected is True  # accepted, so that the client can read the close code
    assert await refused.communicator.receive_output(timeout=10) == {"type": "websocket.close", "code": 4429}
    assert await database_sync_to_async(cache.get)(f"limits:sockets:{alice.pk}") == 2
    await connect(bob)  # another user's sockets are counted apart

    await first.close()
    third = await connect(alice)  # the closed one's place
    assert third.hello["user"]["username"] == "alice"
    refused_again = await connect(alice, expect_hello=False)
    assert (await refused_again.communicator.receive_output(timeout=10))["code"] == 4429


async def test_the_socket_count_goes_back_to_zero_after_many_opens_and_closes(settings, connect_factory):
    settings.SOCKETS_PER_USER = 5
    alice = await database_sync_to_async(make_user)("alice")
    open_client, close_all = connect_factory()
    for _ in range(3):
        clients = [await open_client(alice) for _ in range(5)]
        refused = await open_client(alice, expect_hello=False)
        assert (await refused.communicator.receive_output(timeout=10))["code"] == 4429
        await close_all()
        assert clients
    assert await database_sync_to_async(cache.get)(f"limits:sockets:{alice.pk}") == 0


def test_a_socket_released_after_its_counter_expired_does_not_go_below_zero(settings):
    settings.SOCKETS_PER_USER = 2
    assert limits.socket_open(user_id=3) is True
    cache.delete("limits:sockets:3")  # the TTL safety net dropped it while the socket was open
    limits.socket_closed(user_id=3)
    assert cache.get("limits:sockets:3") is None
    assert limits.socket_open(user_id=3) is True
    cache.set("limits:sockets:3", 0, limits.SOCKET_COUNT_TTL_SECONDS)
    limits.socket_closed(user_id=3)
    assert cache.get("limits:sockets:3") == 0


def seconds_left(key: str) -> float:
    """How long the cache keeps a key, read back from the backend itself (the in-memory cache or Redis)."""
    full = cache.make_and_validate_key(key)
    if hasattr(cache, "_expire_info"):  # LocMemCache
        return cache._expire_info[full] - time.time()
    return cache._cache.get_client(full).ttl(full)


def test_refused_sockets_do_not_extend_a_lockout(settings):
    """A tab retrying every 30 s kept its user's counter (and so a lockout by leaked counts) alive for
    good: only an accepted socket, or an open one's re-check, keeps it; refused attempts do not."""
    settings.SOCKETS_PER_USER = 1
    assert limits.socket_open(user_id=5) is True
    cache.touch("limits:sockets:5", 100)  # as if last touched SOCKET_COUNT_TTL_SECONDS - 100 s ago
    for _ in range(5):
        with pytest.raises(limits.LimitReached):
            limits.socket_open(user_id=5)
    assert cache.get("limits:sockets:5") == 1
    assert seconds_left("limits:sockets:5") <= 100
    limits.socket_closed(user_id=5)
    assert limits.socket_open(user_id=5) is True  # an accepted socket does keep it
    assert seconds_left("limits:sockets:5") > limits.SOCKET_COUNT_TTL_SECONDS - 60


def test_sockets_are_not_counted_while_the_limit_is_off(settings):
    settings.SOCKETS_PER_USER = 0
    assert [limits.socket_open(user_id=4) for _ in range(50)] == [False] * 50  # allowed, not counted
    assert cache.get("limits:sockets:4") is None
    settings.SOCKETS_PER_USER = 1
    assert limits.socket_open(user_id=4) is True
    with pytest.raises(limits.LimitReached, match="At most 1 open connections per user"):
        limits.socket_open(user_id=4)
    assert cache.get("limits:sockets:4") == 1
