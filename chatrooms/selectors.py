"""Reads. Every read of a room goes through `room_get_for_user`, the one permission-checked door."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Exists, OuterRef, Q, QuerySet

from streaming.replay import chunks_after, last_chunk_index

from .models import Membership, Message, Room
from .protocol import message_to_dict, room_to_dict

MESSAGES_PAGE_SIZE = 200


class RoomNotFound(Exception):
    """The room does not exist or the user may not see it; the two are indistinguishable."""


def rooms_visible_to(user: AbstractBaseUser) -> QuerySet[Room]:
    member_of = Membership.objects.filter(user_id=user.pk).values("room_id")
    return Room.objects.filter(Q(owner_id=user.pk) | Q(pk__in=member_of))


def _annotated(rooms: QuerySet[Room]) -> QuerySet[Room]:
    return rooms.select_related("owner").annotate(
        message_count=Count("messages", filter=~Q(messages__status=Message.Status.STREAMING)),
        is_streaming=Exists(Message.objects.filter(room_id=OuterRef("pk"), status=Message.Status.STREAMING)),
    )


def room_get_for_user(*, user: AbstractBaseUser, room_id: str | int) -> Room:
    """The room if this user may see it, else RoomNotFound, whether or not it exists."""
    try:
        pk = int(room_id)
    except (TypeError, ValueError):
        raise RoomNotFound(room_id) from None
    room = _annotated(rooms_visible_to(user)).filter(pk=pk).first()
    if room is None:
        raise RoomNotFound(room_id)
    return room


def room_list_for_user(*, user: AbstractBaseUser) -> list[dict[str, Any]]:
    """Every room the user can see, most recently active first, as protocol dicts."""
    rooms = _annotated(rooms_visible_to(user)).order_by("-last_active_at", "-pk")
    return [room_to_dict(room) for room in rooms]


def room_viewer_ids(*, room: Room) -> list[int]:
    """The users who can see a room: its owner and its members."""
    return [room.owner_id, *Membership.objects.filter(room=room).values_list("user_id", flat=True)]


def messages_for_room(*, room: Room, limit: int = MESSAGES_PAGE_SIZE) -> list[dict[str, Any]]:
    """The newest `limit` finished messages, oldest first."""
    newest = (
        Message.objects.filter(room=room)
        .exclude(status=Message.Status.STREAMING)
        .select_related("author")
        .order_by("-id")[:limit]
    )
    return [message_to_dict(message) for message in reversed(list(newest))]


@dataclass(frozen=True)
class LiveStream:
    stream_id: str
    request_id: str
    message_id: int


def live_stream_for_room(*, room: Room) -> LiveStream | None:
    message = (
        Message.objects.filter(room=room, status=Message.Status.STREAMING)
        .select_related("stream")
        .only("id", "stream__id", "stream__request_id")
        .first()
    )
    if message is None or message.stream is None:
        return None
    return LiveStream(str(message.stream.pk), message.stream.request_id, message.pk)


@dataclass(frozen=True)
class RoomSnapshot:
    """What a joining connection needs at once: the messages, and the live stream's stored chunks."""

    room_id: str
    messages: list[dict[str, Any]]
    live: LiveStream | None
    replay: list[tuple[int, str]]


def room_snapshot_for_user(*, user: AbstractBaseUser, room_id: str, since: dict[str, Any] | None) -> RoomSnapshot:
    room = room_get_for_user(user=user, room_id=room_id)
    live = live_stream_for_room(room=room)
    replay: list[tuple[int, str]] = []
    if live is not None:
        after = since["index"] if since and since["streamId"] == live.stream_id else -1
        replay = chunks_after(stream_id=live.stream_id, after_index=after)
    return RoomSnapshot(str(room.pk), messages_for_room(room=room), live, replay)


def live_stream_for_user_request(
    *, user: AbstractBaseUser, request_id: str, prefer_room_id: str | None = None
) -> tuple[Room, LiveStream] | None:
    """The live stream started with this request id in a room the user can see; request ids are
    the clients' own, so one in `prefer_room_id` (the connection's active room) wins."""
    candidates = list(
        Message.objects.filter(
            room__in=rooms_visible_to(user), status=Message.Status.STREAMING, stream__request_id=request_id
        ).select_related("stream")
    )
    message = next((m for m in candidates if str(m.room_id) == prefer_room_id), candidates[0] if candidates else None)
    if message is None or message.stream is None:
        return None
    room = room_get_for_user(user=user, room_id=message.room_id)
    return room, LiveStream(str(message.stream.pk), request_id, message.pk)


def history_for_model(*, room_id: int, before_message_id: int) -> list[Message]:
    """The finished messages a reply is an answer to, oldest first."""
    return list(
        Message.objects.filter(room_id=room_id, id__lt=before_message_id)
        .exclude(status=Message.Status.STREAMING)
        .order_by("id")
    )


@dataclass(frozen=True)
class StreamProgress:
    """A stream as the database has it: chunks after an index, and its stream.done frame once ended."""

    message_id: str
    request_id: str
    chunks: list[tuple[int, str]]
    done: dict[str, Any] | None


def stream_progress_for_room(*, room_id: str, stream_id: str, after_index: int) -> StreamProgress | None:
    """None if the stream is not (or no longer) one of this room's."""
    message = (
        Message.objects.filter(room_id=int(room_id), stream_id=stream_id)
        .select_related("stream", "author")
        .first()
    )
    if message is None or message.stream is None:
        return None
    chunks = chunks_after(stream_id=stream_id, after_index=after_index)
    done = None
    if message.status != Message.Status.STREAMING:
        last_index = chunks[-1][0] if chunks else last_chunk_index(stream_id=stream_id)
        done = {
            "type": "stream.done",
            "roomId": str(message.room_id),
            "requestId": message.stream.request_id,
            "streamId": stream_id,
            "status": message.status,
            "message": message_to_dict(message),
            "lastIndex": last_index,
        }
    return StreamProgress(str(message.pk), message.stream.request_id, chunks, done)


@dataclass(frozen=True)
class MessagePage:
    """Finished messages for a page, oldest first, and where the next older page starts."""

    messages: list[Message]
    older_before: int | None


def message_page_for_room(*, room: Room, before_id: int | None, limit: int) -> MessagePage:
    queryset = Message.objects.filter(room=room).exclude(status=Message.Status.STREAMING).select_related("author")
    if before_id is not None:
        queryset = queryset.filter(id__lt=before_id)
    newest = list(queryset.order_by("-id")[: limit + 1])
    has_older = len(newest) > limit
    messages = list(reversed(newest[:limit]))
    return MessagePage(messages, messages[0].pk if has_older and messages else None)


def message_get_in_room(*, room: Room, message_id: int) -> Message | None:
    return (
        Message.objects.filter(room=room, pk=message_id)
        .exclude(status=Message.Status.STREAMING)
        .select_related("author")
        .first()
    )
