"""Group names and broadcasts. Services broadcast after commit; the reply runner sends chunks directly."""
from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction


async def channel_release(channel: str) -> None:
    """Give a channel of this process back to the layer. Layers have no call for it: Channels releases a
    consumer's channel by cancelling the receive that waits on it, and channels-redis's pub/sub layer
    then unsubscribes, but only if that receive was waiting: one that had a message in hand when its
    consumer stopped (a busy room's chunks) left the channel subscribed, with its queue, for good; so
    did each /healthz check. So: cancel receives of our own until the layer has forgotten the channel
    (each one that finds a message queued takes it: the consumer is going, nobody wants it)."""
    layer = get_channel_layer()
    inner = layer._get_layer() if hasattr(layer, "_get_layer") else layer  # channels-redis: per event loop
    known = getattr(inner, "channels", None)
    for _attempt in range(1000):
        if known is None or channel not in known:
            return
        waiting = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0)  # let it take a queued message or reach its wait
        waiting.cancel()
        try:
            await waiting
        except asyncio.CancelledError:
            pass


def room_group(room_id: int | str) -> str:
    return f"room.{int(room_id)}"


def user_group(user_id: int | str) -> str:
    return f"user.{int(user_id)}"


def stream_control_group(stream_id: str) -> str:
    """Where cancel reaches the worker that runs a stream, whichever it is."""
    return f"stream.{stream_id}"


def _send_now(group: str, event: dict[str, Any]) -> None:
    async_to_sync(get_channel_layer().group_send)(group, event)


def send_after_commit(group: str, event: dict[str, Any]) -> None:
    # Robust: a broadcast that fails (Redis down) is logged and lost, like a dropped message, never
    # an error of the write that committed (a started answer would otherwise never run).
    transaction.on_commit(lambda: _send_now(group, event), robust=True)


def room_frame_after_commit(room_id: int, frame: dict[str, Any]) -> None:
    """A protocol frame for every connection whose active room this is."""
    send_after_commit(room_group(room_id), {"type": "room.frame", "roomId": str(room_id), "frame": frame})


def rooms_changed_after_commit(user_ids: Iterable[int]) -> None:
    """Every connection of these users re-reads and sends its `rooms` list."""
    for user_id in set(user_ids):
        send_after_commit(user_group(user_id), {"type": "rooms.changed"})


def room_gone_after_commit(room_id: int, user_ids: Iterable[int], frame: dict[str, Any]) -> None:
    """`room.deleted` or `room.cleared`: to the room's viewers, who then reset what they track."""
    send_after_commit(room_group(room_id), {"type": "room.gone", "roomId": str(room_id), "frame": frame})
    rooms_changed_after_commit(user_ids)


def member_removed_after_commit(room_id: int, user_id: int) -> None:
    """A user removed from a room: each of their connections drops it as if it had been deleted. To the
    user's group, not the room's: connections that never joined the room must hear of it too."""
    send_after_commit(user_group(user_id), {"type": "room.access.lost", "roomId": str(room_id)})


def stream_cancel_after_commit(stream_id: str) -> None:
    send_after_commit(stream_control_group(stream_id), {"type": "stream.cancel", "streamId": stream_id})
