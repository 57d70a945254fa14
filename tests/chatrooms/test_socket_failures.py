"""Whatever a socket's handler raises, the socket ends cleanly: `error` `internal`, a 1011 close, and its
place in the user's socket count, its groups and its tasks given back (once); every frame it sends can
be encoded, whatever text reached it."""
from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.core.cache import cache
from django.db import connection

from chatrooms import events, limits
from chatrooms.models import RoomPreference
from tests.factories import make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)
IN_MEMORY = {"default": {"BACKEND": "streaming.layers.OneProcessChannelLayer", "CONFIG": {"capacity": 1000}}}


def rename_table(old: str, new: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {connection.ops.quote_name(old)} RENAME TO {connection.ops.quote_name(new)}")


def socket_tasks() -> list[asyncio.Task]:
    """The background tasks of ChatConsumers (the watchdog, the re-check timer) still running."""
    return [task for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "__qualname__", "").startswith("ChatConsumer.") and not task.done()]


async def test_a_database_error_in_a_layer_event_closes_the_socket_and_releases_all_it_held(connect, settings):
    """The rooms list of a `rooms.changed` event read while the database refuses the query (a table gone:
    a real error of the database, as a restart or a lock past its timeout would raise)."""
    settings.CHANNEL_LAYERS = IN_MEMORY
    settings.SOCKETS_PER_USER = 2
    alice = await database_sync_to_async(make_user)("alice")
    room = await database_sync_to_async(make_room)(alice, "Busy")
    assert socket_tasks() == []
    socket = await connect(alice)
    await socket.send({"type": "room.join", "roomId": str(room.pk)})
    await socket.receive_until("messages")
    layer = get_channel_layer()
    (channel,) = layer.groups[events.user_group(alice.pk)]
    assert channel in layer.groups[events.room_group(room.pk)]
    assert cache.get(limits._socket_key(alice.pk)) == 1

    table = RoomPreference._meta.db_table
    await database_sync_to_async(rename_table)(table, f"{table}_away")
    try:
        await layer.group_send(events.user_group(alice.pk), {"type": "rooms.changed"})
        error = await socket.receive()
        assert (error["type"], error["code"]) == ("error", "internal"), error
        assert await socket.communicator.receive_output(timeout=10) == {"type": "websocket.close", "code": 1011}
    finally:
        await database_sync_to_async(rename_table)(f"{table}_away", table)

    # Everything it held is given back: the count, both groups, its tasks.
    assert cache.get(limits._socket_key(alice.pk)) == 0
    assert channel not in layer.groups.get(events.user_group(alice.pk), {})
    assert channel not in layer.groups.get(events.room_group(room.pk), {})
    left = socket_tasks()
    if left:
        await asyncio.wait(left, timeout=5)
    assert socket_tasks() == []
    # The user may open SOCKETS_PER_USER sockets again; daphne's disconnect, when it comes, releases nothing twice.
    await socket.close()
    again = [await connect(alice), await connect(alice)]
    assert [client.connected for client in again] == [True, True]
    assert cache.get(limits._socket_key(alice.pk)) == 2


async def test_text_that_utf8_cannot_carry_reaches_the_client_as_u_fffd(connect, settings):
    """A lone surrogate in an event's frame (daphne's encode raised on it, ending the consumer) is sent as
    U+FFFD; a surrogate pair split in two is sent as its character."""
    settings.CHANNEL_LAYERS = IN_MEMORY
    alice = await database_sync_to_async(make_user)("alice")
    socket = await connect(alice)
    frame = {"type": "message.feedback", "messageId": "1", "feedback": {"rating": "up",
                                                                       "comment": "a\ud800b \ud83d\ude00"}}
    await get_channel_layer().group_send(events.user_group(alice.pk), {"type": "message.feedback", "frame": frame})
    received = await socket.receive()
    assert received["feedback"]["comment"] == "a\ufffdb \U0001F600"
    await socket.send({"type": "room.create", "name": "Still here", "ref": "r"})
    assert (await socket.receive_until("room.created"))[-1]["ref"] == "r"
