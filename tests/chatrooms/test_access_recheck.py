"""Losing a room or a session never rests on one message of the channel layer: with `room.access.lost` or
`session.ended` lost (or never sent), a socket finds out by itself within SESSION_RECHECK_SECONDS (its
timer), at its next stream check (re-subscribing) or gap fill, and stops receiving the room."""
from __future__ import annotations

import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.contrib.sessions.models import Session

from chatrooms import events, services
from chatrooms.models import Membership
from chatrooms.scripted_model_server import ScriptedReply
from streaming.layers import OneProcessChannelLayer
from tests.chatrooms.test_gap_fill import DroppingLayer
from tests.chatrooms.test_session_recheck import browsers, closed_with  # noqa: F401  (a fixture)
from tests.factories import add_member, make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)


class LosingLayer(OneProcessChannelLayer):
    """The default in-memory layer, losing every `room.access.lost` and `session.ended` sent to a group."""

    async def group_send(self, group: str, message: dict) -> None:
        if message.get("type") not in ("room.access.lost", "session.ended"):
            await super().group_send(group, message)


LOSING = {"default": {"BACKEND": "tests.chatrooms.test_access_recheck.LosingLayer", "CONFIG": {"capacity": 1000}}}
IN_MEMORY = {"default": {"BACKEND": "streaming.layers.OneProcessChannelLayer", "CONFIG": {"capacity": 1000}}}


async def shared_room_with_viewers(connect: Any) -> tuple[Any, Any, Any, Any]:
    alice, bob = await database_sync_to_async(make_user)("alice"), await database_sync_to_async(make_user)("bob")
    room = await database_sync_to_async(make_room)(alice, "Shared")
    await database_sync_to_async(add_member)(room, bob)
    owner, member = await connect(alice), await connect(bob)
    for client in (owner, member):
        await client.send({"type": "room.join", "roomId": str(room.pk)})
        await client.receive_until("messages")
    return alice, room, owner, member


def of_room(frames: list[dict[str, Any]], room: Any) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame.get("roomId") == str(room.pk) and frame["type"] != "room.deleted"]


async def rest_of(client: Any) -> list[dict[str, Any]]:
    frames = []
    while not await client.nothing_more():
        frames.append(await client.receive())
    return frames


@pytest.mark.parametrize("removal", ["unshared-event-lost", "membership-deleted"])
async def test_a_removed_member_stops_reading_within_the_recheck_interval(removal, scripted_model, connect, settings):
    settings.CHANNEL_LAYERS = LOSING
    settings.SESSION_RECHECK_SECONDS = 1
    alice, room, owner, member = await shared_room_with_viewers(connect)
    tokens = [f"t{i} " for i in range(100)]
    scripted_model.enqueue(ScriptedReply(tokens=tokens, delay=0.05))  # about 5 s of answer
    await owner.send({"type": "chat.send", "requestId": "q1", "text": "go"})
    await member.receive_until_text("t3 ")

    if removal == "unshared-event-lost":
        await database_sync_to_async(services.room_unshare)(user=alice, room_id=room.pk, username="bob")
    else:  # no service, no event at all
        await database_sync_to_async(Membership.objects.filter(room=room, user__username="bob").delete)()
    removed_at = time.monotonic()
    before = await member.receive_until("room.deleted", timeout=5)
    assert time.monotonic() - removed_at < settings.SESSION_RECHECK_SECONDS + 2
    assert "stream.done" not in [frame["type"] for frame in before], "removed while the answer ran"

    # Nothing of the room follows: not the rest of this answer, nor the next exchange.
    await owner.receive_until("stream.done", requestId="q1", timeout=15)
    await owner.send({"type": "chat.send", "requestId": "q2", "text": "and now"})
    await owner.receive_until("stream.done", requestId="q2")
    assert of_room(await rest_of(member), room) == []
    await member.send({"type": "room.join", "roomId": str(room.pk), "ref": "j"})
    refused = await member.receive_until("error")
    assert (refused[-1]["code"], refused[-1]["ref"]) == ("not_found", "j")


async def test_a_removal_is_found_when_the_stream_check_re_subscribes(scripted_model, connect, settings):
    """The viewer is dropped from the room's group (as a layer expiring it would) and loses the room without
    an event; its quiet-stream check must not subscribe it again and send it the rest of the answer."""
    settings.CHANNEL_LAYERS = IN_MEMORY
    settings.SESSION_RECHECK_SECONDS = 3600  # the timer stays out of it
    alice, room, owner, member = await shared_room_with_viewers(connect)
    scripted_model.enqueue(ScriptedReply(tokens=[f"t{i} " for i in range(100)], delay=0.05))
    await owner.send({"type": "chat.send", "requestId": "q1", "text": "go"})
    await member.receive_until_text("t3 ")
    group = get_channel_layer().groups[events.room_group(room.pk)]
    for channel in list(group)[1:]:  # the member's channel (joined second)
        del group[channel]
    await database_sync_to_async(Membership.objects.filter(room=room, user__username="bob").delete)()

    frames = await member.receive_until("room.deleted", timeout=10)
    assert "stream.done" not in [frame["type"] for frame in frames]
    await owner.receive_until("stream.done", requestId="q1", timeout=15)
    assert of_room(await rest_of(member), room) == []


async def test_a_removal_is_found_by_the_next_gap_fill(scripted_model, connect, settings):
    """Batches of chunks lost on the way make the viewer fill the gap from the database: that read is
    permission-checked too."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "tests.chatrooms.test_gap_fill.DroppingLayer",
                                           "CONFIG": {"capacity": 1000}}}
    settings.SESSION_RECHECK_SECONDS = 3600
    DroppingLayer.sent = 1  # not every fourth batch yet: the viewers start in step
    alice, room, owner, member = await shared_room_with_viewers(connect)
    scripted_model.enqueue(ScriptedReply(tokens=[f"t{i} " for i in range(200)], delay=0.02))
    await owner.send({"type": "chat.send", "requestId": "q1", "text": "go"})
    await member.receive_until_text("t3 ")
    await database_sync_to_async(Membership.objects.filter(room=room, user__username="bob").delete)()

    frames = await member.receive_until("room.deleted", timeout=10)
    assert "stream.done" not in [frame["type"] for frame in frames]
    await owner.receive_until("stream.done", requestId="q1", timeout=20)
    assert of_room(await rest_of(member), room) == []


@pytest.mark.parametrize("ending", ["logout-event-lost", "session-deleted"])
async def test_a_passive_socket_of_an_ended_session_closes_within_the_recheck_interval(
    ending, browsers, settings  # noqa: F811
):
    settings.CHANNEL_LAYERS = LOSING
    settings.SESSION_RECHECK_SECONDS = 1
    alice = await database_sync_to_async(make_user)("alice")
    browser = await browsers(alice)
    socket = await browser.open_socket()  # it sends nothing from now on
    if ending == "logout-event-lost":
        assert (await database_sync_to_async(browser.http.post)("/accounts/logout/")).status_code == 302
    else:
        await database_sync_to_async(Session.objects.filter(session_key=browser.session_key).delete)()
    ended_at = time.monotonic()
    assert await closed_with(socket) == 4401
    assert time.monotonic() - ended_at < settings.SESSION_RECHECK_SECONDS + 2
