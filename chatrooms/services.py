"""Writes: rooms, messages and the start and end of replies. Each broadcasts after its commit."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from streaming.lifecycle import stream_finish, stream_request_cancel, stream_start, streams_delete_for_keys

from . import events
from .catalog import default_model, is_known_model
from .models import Message, PendingToolCall, Room
from .protocol import message_to_dict
from .selectors import live_stream_for_room, room_get_for_user, room_viewer_ids, rooms_visible_to
from .tools import ToolDeclarationError, client_tools_from_body, registered_tools


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
    user_id: int | None = None  # who asked


def _start_reply(*, user: AbstractBaseUser, room: Room, request_id: str, body: dict[str, Any] | None) -> ReplyStart:
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
        user_id=user.pk,
    )


def _check_body(body: dict[str, Any] | None) -> None:
    """Refuse a body whose client-declared tools cannot be offered to the model, before anything is stored."""
    try:
        client_tools_from_body(body, taken=set(registered_tools()))
    except ToolDeclarationError as error:
        raise ActionRefused("bad_request", str(error)) from None


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
    _check_body(body)
    message = Message.objects.create(room=room, role=Message.Role.USER, author=user, content=text,
                                     parts=[{"type": "text", "text": text}])
    events.room_frame_after_commit(
        room.pk, {"type": "message.created", "roomId": str(room.pk), "message": message_to_dict(message)}
    )
    return _start_reply(user=user, room=room, request_id=request_id, body=body)


def _remove_messages(room: Room, messages: list[Message]) -> None:
    _remove_message_ids(room.pk, [m.pk for m in messages])


def _remove_message_ids(room_id: int, message_ids: list[int]) -> None:
    """Delete messages in one statement and tell the room's viewers, after commit, which went. Their
    finished streams stay, unreferenced and harmless, until the room is cleared or deleted; their
    chunks go with cleanup_streams."""
    Message.objects.filter(pk__in=message_ids).delete()
    for message_id in message_ids:
        events.room_frame_after_commit(
            room_id, {"type": "message.removed", "roomId": str(room_id), "messageId": str(message_id)}
        )


def _prune_room_beyond_limit(room_id: int) -> list[int]:
    """Remove the oldest finished messages beyond ROOM_MAX_MESSAGES (0: no limit); the ids, oldest
    first. A live answer's placeholder is neither counted nor removed, and with a limit of at least
    one the newest message always stays."""
    limit = settings.ROOM_MAX_MESSAGES
    if limit <= 0:
        return []
    finished = Message.objects.filter(room_id=room_id).exclude(status=Message.Status.STREAMING)
    removed = sorted(finished.order_by("-id").values_list("id", flat=True)[limit:])
    _remove_message_ids(room_id, removed)
    return removed


@transaction.atomic
def room_prune_messages(*, room_id: int) -> list[int]:
    """Keep the room within ROOM_MAX_MESSAGES: remove its oldest messages beyond it, and after commit
    send `message.removed` for each and the room list to its viewers. The ids removed, oldest first."""
    removed = _prune_room_beyond_limit(room_id)
    room = Room.objects.only("id", "owner_id").filter(pk=room_id).first() if removed else None
    if room is not None:
        events.rooms_changed_after_commit(room_viewer_ids(room=room))
    return removed


@transaction.atomic
def chat_regenerate(
    *, user: AbstractBaseUser, room_id: str | int, request_id: str, body: dict[str, Any] | None = None
) -> ReplyStart:
    """Remove the answers after the last user message and answer it again."""
    room = room_get_for_user(user=user, room_id=room_id)
    _refuse_if_streaming(room)
    _check_body(body)
    last_user = Message.objects.filter(room=room, role=Message.Role.USER).order_by("-id").first()
    if last_user is None:
        raise ActionRefused("bad_request", "There is no message to answer again in this room.")
    _remove_messages(room, list(Message.objects.filter(room=room, id__gt=last_user.pk)))
    return _start_reply(user=user, room=room, request_id=request_id, body=body)


@transaction.atomic
def chat_edit(
    *, user: AbstractBaseUser, room_id: str | int, message_id: str, text: str, request_id: str,
    body: dict[str, Any] | None = None,
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
    _check_body(body)
    _remove_messages(room, list(Message.objects.filter(room=room, id__gt=message.pk)))
    message.content = text
    message.parts = [{"type": "text", "text": text}]
    message.save(update_fields=["content", "parts", "updated_at"])
    events.room_frame_after_commit(
        room.pk, {"type": "message.updated", "roomId": str(room.pk), "message": message_to_dict(message)}
    )
    return _start_reply(user=user, room=room, request_id=request_id, body=body)


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
    # Every finished answer keeps its room within ROOM_MAX_MESSAGES; the room list below covers it.
    _prune_room_beyond_limit(start.room_id)
    events.rooms_changed_after_commit(room_viewer_ids(room=message.room))
    return message



# -- tool calls that wait for a person ---------------------------------------------------------


@transaction.atomic
def reply_publish_progress(*, start: ReplyStart, parts: list[dict[str, Any]]) -> None:
    """Store the parts of a live answer and send `message.updated`: a tool part changed state."""
    message = Message.objects.filter(pk=start.message_id, status=Message.Status.STREAMING).first()
    if message is None:
        return
    message.parts = parts
    message.content = "".join(part.get("text", "") for part in parts if part.get("type") == "text")
    message.save(update_fields=["parts", "content", "updated_at"])
    events.room_frame_after_commit(
        start.room_id, {"type": "message.updated", "roomId": str(start.room_id), "message": message_to_dict(message)}
    )


@transaction.atomic
def tool_wait_begin(
    *, start: ReplyStart, tool_call_id: str, tool_name: str, kind: str, parts: list[dict[str, Any]]
) -> None:
    """A reply now waits for an approval or a client's result of this call."""
    PendingToolCall.objects.create(
        room_id=start.room_id, stream_id=start.stream_id, tool_call_id=tool_call_id, tool_name=tool_name, kind=kind
    )
    reply_publish_progress(start=start, parts=parts)


@dataclass(frozen=True)
class ToolAnswer:
    answer: dict[str, Any]
    user_id: int | None


@transaction.atomic
def tool_call_answer(
    *, user: AbstractBaseUser, tool_call_id: str, kind: str, answer: dict[str, Any], prefer_room_id: str | None
) -> None:
    """Take a person's answer to a waiting call in a room they can see; `not_found` for a call that
    is unknown, already answered, expired, of the other kind, or in a room they cannot see."""
    waiting = (
        PendingToolCall.objects.select_for_update()
        .filter(tool_call_id=tool_call_id, kind=kind, state=PendingToolCall.State.WAITING,
                stream__status="streaming", room__in=rooms_visible_to(user))
        .order_by("-id")
    )
    candidates = list(waiting)
    chosen = next((w for w in candidates if str(w.room_id) == prefer_room_id), candidates[0] if candidates else None)
    if chosen is None:
        what = "approval" if kind == PendingToolCall.Kind.APPROVAL else "a result"
        raise ActionRefused("not_found", f"No tool call with that id is waiting for {what}.")
    chosen.state = PendingToolCall.State.ANSWERED
    chosen.answer = answer
    chosen.answered_by = user
    chosen.answered_at = timezone.now()
    chosen.save(update_fields=["state", "answer", "answered_by", "answered_at"])
    events.send_after_commit(
        events.stream_control_group(str(chosen.stream_id)),
        {"type": "tool.answer", "toolCallId": tool_call_id, "answer": answer, "userId": user.pk},
    )


@transaction.atomic
def tool_wait_expire(*, stream_id: str, tool_call_id: str) -> ToolAnswer | None:
    """Give up waiting, unless an answer got in first: then that answer."""
    wait = PendingToolCall.objects.select_for_update().filter(stream_id=stream_id, tool_call_id=tool_call_id).first()
    if wait is None:
        return None
    if wait.state == PendingToolCall.State.ANSWERED:
        return ToolAnswer(wait.answer, wait.answered_by_id)
    wait.state = PendingToolCall.State.EXPIRED
    wait.save(update_fields=["state"])
    return None


def tool_answers_for_stream(*, stream_id: str) -> dict[str, ToolAnswer]:
    """Answers already taken for a stream's calls: how a reply hears of them if the channel layer lost the news."""
    answered = PendingToolCall.objects.filter(stream_id=stream_id, state=PendingToolCall.State.ANSWERED)
    return {w.tool_call_id: ToolAnswer(w.answer, w.answered_by_id) for w in answered}
