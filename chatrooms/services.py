"""Writes: rooms, messages and the start and end of replies. Each broadcasts after its commit."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from streaming.lifecycle import stream_finish, stream_request_cancel, stream_start, streams_delete_for_keys

from . import events
from .catalog import default_model, is_known_model
from .models import Message, Room
from .protocol import message_to_dict
from .selectors import live_stream_for_room, room_get_for_user, room_viewer_ids


class ActionRefused(Exception):
    """A well-formed request the server will not carry out; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _room_for_owner(*, user: AbstractBaseUser, room_id: str | int) -> Room:
    room = room_get_for_user(user=user, room_id=room_id)
    if room.owner_id != user.pk:
        raise ActionRefused("forbidden", "Only the room's owner may do that.")
    return room


def _touch(room: Room) -> None:
    room.last_active_at = timezone.now()
    Room.objects.filter(pk=room.pk).update(last_active_at=room.last_active_at)


# -- rooms -------------------------------------------------------------------------------------


@transaction.atomic
def room_create(*, user: AbstractBaseUser, name: str) -> Room:
    room = Room.objects.create(owner=user, name=name.strip(), model=default_model())
    events.rooms_changed_after_commit([user.pk])
    return room


@transaction.atomic
def room_rename(*, user: AbstractBaseUser, room_id: str | int, name: str) -> Room:
    room = _room_for_owner(user=user, room_id=room_id)
    room.name = name.strip()
    room.save(update_fields=["name"])
    events.rooms_changed_after_commit(room_viewer_ids(room=room))
    return room


@transaction.atomic
def room_configure(
    *, user: AbstractBaseUser, room_id: str | int, model: str | None = None, system_prompt: str | None = None
) -> Room:
    room = _room_for_owner(user=user, room_id=room_id)
    if model is not None and not is_known_model(model):
        raise ActionRefused("bad_request", f"Unknown model {model[:200]!r}; pick one of hello.models.")
    if model is not None:
        room.model = model
    if system_prompt is not None:
        room.system_prompt = system_prompt
    room.save(update_fields=["model", "system_prompt"])
    events.rooms_changed_after_commit(room_viewer_ids(room=room))
    return room


def _cancel_live_stream(room: Room) -> None:
    live = live_stream_for_room(room=room)
    if live is not None:
        stream_request_cancel(stream_id=live.stream_id)
        events.stream_cancel_after_commit(live.stream_id)


@transaction.atomic
def room_clear(*, user: AbstractBaseUser, room_id: str | int) -> Room:
    """Delete a room's messages and streams; a live stream is cancelled first."""
    room = _room_for_owner(user=user, room_id=room_id)
    _cancel_live_stream(room)
    Message.objects.filter(room=room).delete()
    streams_delete_for_keys(keys=[room.stream_key])
    _touch(room)
    events.room_gone_after_commit(room.pk, room_viewer_ids(room=room), {"type": "room.cleared", "roomId": str(room.pk)})
    return room


@transaction.atomic
def room_delete(*, user: AbstractBaseUser, room_id: str | int) -> None:
    room = _room_for_owner(user=user, room_id=room_id)
    viewers = room_viewer_ids(room=room)
    _cancel_live_stream(room)
    streams_delete_for_keys(keys=[room.stream_key])
    room_pk = room.pk
    room.delete()
    events.room_gone_after_commit(room_pk, viewers, {"type": "room.deleted", "roomId": str(room_pk)})


# -- replies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyStart:
    """Everything the reply runner needs to stream an answer."""

    room_id: int
    request_id: str
    stream_id: str
    message_id: int
    model: str
    system_prompt: str
    body: dict[str, Any] | None = None


def _start_reply(*, room: Room, request_id: str, body: dict[str, Any] | None) -> ReplyStart:
    """Create the stream and the assistant's placeholder; `busy` if the room already streams."""
    try:
        with transaction.atomic():
            stream = stream_start(key=room.stream_key, request_id=request_id)
            placeholder = Message.objects.create(
                room=room, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING, stream=stream
            )
    except IntegrityError:
        raise ActionRefused("busy", "This room is already answering; wait for it or cancel it.") from None
    _touch(room)
    events.room_frame_after_commit(
        room.pk,
        {"type": "stream.start", "roomId": str(room.pk), "requestId": request_id, "streamId": str(stream.pk),
         "messageId": str(placeholder.pk)},
    )
    events.rooms_changed_after_commit(room_viewer_ids(room=room))
    return ReplyStart(
        room_id=room.pk,
        request_id=request_id,
        stream_id=str(stream.pk),
        message_id=placeholder.pk,
        model=room.model,
        system_prompt=room.system_prompt,
        body=body,
    )


def _refuse_if_streaming(room: Room) -> None:
    if room.is_streaming:
        raise ActionRefused("busy", "This room is already answering; wait for it or cancel it.")


@transaction.atomic
def chat_send(
    *, user: AbstractBaseUser, room_id: str | int, request_id: str, text: str, body: dict[str, Any] | None = None
) -> ReplyStart:
    """Store the user's message and start the assistant's answer."""
    room = room_get_for_user(user=user, room_id=room_id)
    _refuse_if_streaming(room)
    message = Message.objects.create(room=room, role=Message.Role.USER, author=user, content=text,
                                     parts=[{"type": "text", "text": text}])
    events.room_frame_after_commit(
        room.pk, {"type": "message.created", "roomId": str(room.pk), "message": message_to_dict(message)}
    )
    return _start_reply(room=room, request_id=request_id, body=body)


def _remove_messages(room: Room, messages: list[Message]) -> None:
    Message.objects.filter(pk__in=[m.pk for m in messages]).delete()
    for message in messages:
        events.room_frame_after_commit(
            room.pk, {"type": "message.removed", "roomId": str(room.pk), "messageId": str(message.pk)}
        )


@transaction.atomic
def chat_regenerate(*, user: AbstractBaseUser, room_id: str | int, request_id: str) -> ReplyStart:
    """Remove the answers after the last user message and answer it again."""
    room = room_get_for_user(user=user, room_id=room_id)
    _refuse_if_streaming(room)
    last_user = Message.objects.filter(room=room, role=Message.Role.USER).order_by("-id").first()
    if last_user is None:
        raise ActionRefused("bad_request", "There is no message to answer again in this room.")
    _remove_messages(room, list(Message.objects.filter(room=room, id__gt=last_user.pk)))
    return _start_reply(room=room, request_id=request_id, body=None)


@transaction.atomic
def chat_edit(
    *, user: AbstractBaseUser, room_id: str | int, message_id: str, text: str, request_id: str
) -> ReplyStart:
    """Replace the text of one of the user's messages, drop everything after it, answer again."""
    room = room_get_for_user(user=user, room_id=room_id)
    try:
        message = Message.objects.select_related("author").get(pk=int(message_id), room=room)
    except (ValueError, Message.DoesNotExist):
        raise ActionRefused("not_found", "No such message in this room.") from None
    if message.role != Message.Role.USER or message.author_id != user.pk:
        raise ActionRefused("forbidden", "You can only edit your own messages.")
    _refuse_if_streaming(room)
    _remove_messages(room, list(Message.objects.filter(room=room, id__gt=message.pk)))
    message.content = text
    message.parts = [{"type": "text", "text": text}]
    message.save(update_fields=["content", "parts", "updated_at"])
    events.room_frame_after_commit(
        room.pk, {"type": "message.updated", "roomId": str(room.pk), "message": message_to_dict(message)}
    )
    return _start_reply(room=room, request_id=request_id, body=None)


@transaction.atomic
def chat_cancel(*, user: AbstractBaseUser, room: Room, stream_id: str) -> bool:
    """Ask the stream to stop: a flag its worker sees at the next flush, and a message that arrives at once."""
    if not stream_request_cancel(stream_id=stream_id):
        return False
    events.stream_cancel_after_commit(stream_id)
    return True


@transaction.atomic
def reply_finish(
    *,
    start: ReplyStart,
    status: str,
    content: str,
    parts: list[dict[str, Any]],
    last_index: int,
    error_text: str | None = None,
) -> Message | None:
    """Store the answer and end its stream, exactly once; None if someone else already ended it
    (the room was cleared or deleted, or a sweep found the stream stale)."""
    if not stream_finish(stream_id=start.stream_id, status=status):
        return None
    message = (
        Message.objects.select_related("author", "room")
        .filter(pk=start.message_id, status=Message.Status.STREAMING)
        .first()
    )
    if message is None:
        return None
    message.status = status
    message.content = content
    message.parts = parts
    message.save(update_fields=["status", "content", "parts", "updated_at"])
    _touch(message.room)
    if status == Message.Status.ERROR:
        events.room_frame_after_commit(
            start.room_id,
            {"type": "error", "code": "model_error", "message": error_text or "The model call failed.",
             "roomId": str(start.room_id), "requestId": start.request_id},
        )
    events.room_frame_after_commit(
        start.room_id,
        {
            "type": "stream.done",
            "roomId": str(start.room_id),
            "requestId": start.request_id,
            "streamId": start.stream_id,
            "status": status,
            "message": message_to_dict(message),
            "lastIndex": last_index,
        },
    )
    events.rooms_changed_after_commit(room_viewer_ids(room=message.room))
    return message

