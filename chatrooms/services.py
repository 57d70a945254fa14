"""Writes: rooms, messages and the start and end of replies. Each broadcasts after its commit."""
from __future__ import annotations

import copy
import hashlib
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from streaming.lifecycle import stream_finish, stream_request_cancel, stream_start, streams_delete_for_keys
from streaming.safe_json import safe_text

from . import events
from .catalog import default_model, is_known_model
from .models import (
    DEFAULT_ROOM_NAME, ROOM_NAME_MAX_LENGTH, ApiToken, Membership, Message, PendingToolCall, Room, RoomPreference,
)
from .shapes import message_to_dict
from .attachments import ATTACHMENTS_PER_MESSAGE, PENDING_MAX_AGE_HOURS, PENDING_UPLOADS_MAX, file_part, read_text_file
from .attachments import AttachmentRefused, attachment_pk
from .models import FEEDBACK_COMMENT_MAX_LENGTH
from .models import Attachment, MessageFeedback
from .shapes import FEEDBACK_RATING_NAMES, feedback_to_dict
from .selectors import live_stream_for_room, room_get_for_user, room_viewer_ids, rooms_visible_to
from .selectors import RoomNotFound, message_ids_to_prune
from . import limits
from datetime import datetime
from .tools import ToolDeclarationError, client_tools_from_body, registered_tools
from .attachments import DOWNLOAD_URL, download_url
from .exports import ImportedMessage, ImportRefused, checked_import
from streaming.lifecycle import streams_request_cancel
from streaming.models import Stream
from .models import AuditLogEntry
from .selectors import room_transcripts_for_staff, room_viewer_ids_for_rooms


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


ROOM_LOCKED_MESSAGE = "This room is locked by a moderator."


def _refuse_if_locked(room: Room) -> None:
    """The one check of every write into a room: a room staff locked is read-only for everyone."""
    if room.locked_at is not None:
        raise ActionRefused("forbidden", ROOM_LOCKED_MESSAGE)


def _touch(room: Room) -> None:
    room.last_active_at = timezone.now()
    Room.objects.filter(pk=room.pk).update(last_active_at=room.last_active_at)


# -- rooms -------------------------------------------------------------------------------------


@transaction.atomic
def room_create(*, user: AbstractBaseUser, name: str) -> Room:
    """A room named DEFAULT_ROOM_NAME (or nothing) gets a title from its first exchange."""
    name = name.strip() or DEFAULT_ROOM_NAME
    room = Room.objects.create(owner=user, name=name, model=default_model(),
                               named_automatically=name == DEFAULT_ROOM_NAME)
    events.rooms_changed_after_commit([user.pk])
    return room


@transaction.atomic
def room_rename(*, user: AbstractBaseUser, room_id: str | int, name: str) -> Room:
    room = _room_for_owner(user=user, room_id=room_id)
    _refuse_if_locked(room)
    room.name = name.strip()
    room.named_automatically = False  # a person chose this name: no automatic title replaces it
    room.save(update_fields=["name", "named_automatically"])
    events.rooms_changed_after_commit(room_viewer_ids(room=room))
    return room


@transaction.atomic
def room_set_automatic_title(*, room_id: int, title: str) -> bool:
    """Give a room still named by default its title; False if a person named it in the meantime."""
    renamed = Room.objects.filter(pk=room_id, named_automatically=True).update(
        name=safe_text(title)[:ROOM_NAME_MAX_LENGTH], named_automatically=False)  # a model's words
    if renamed:
        room = Room.objects.only("id", "owner_id").get(pk=room_id)
        events.rooms_changed_after_commit(room_viewer_ids(room=room))
    return bool(renamed)


@transaction.atomic
def room_configure(
    *, user: AbstractBaseUser, room_id: str | int, model: str | None = None, system_prompt: str | None = None
) -> Room:
    room = _room_for_owner(user=user, room_id=room_id)
    _refuse_if_locked(room)
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
    _refuse_if_locked(room)
    _clear_rooms([room])
    return room


def _clear_rooms(rooms: list[Room]) -> None:
    """Delete the rooms' messages and streams, live streams cancelled first, in a fixed number of
    queries however many rooms; after commit `room.cleared` to each room's viewers, `rooms` to all."""
    room_ids = [room.pk for room in rooms]
    live = Message.objects.filter(room_id__in=room_ids, status=Message.Status.STREAMING, stream__isnull=False)
    for stream_id in streams_request_cancel(stream_ids=list(live.values_list("stream_id", flat=True))):
        events.stream_cancel_after_commit(stream_id)
    Message.objects.filter(room_id__in=room_ids).delete()
    streams_delete_for_keys(keys=[room.stream_key for room in rooms])
    now = timezone.now()
    Room.objects.filter(pk__in=room_ids).update(last_active_at=now)
    for room in rooms:
        room.last_active_at = now
        events.room_gone_after_commit(room.pk, [], {"type": "room.cleared", "roomId": str(room.pk)})
    events.rooms_changed_after_commit(room_viewer_ids_for_rooms(rooms=rooms))


@transaction.atomic
def room_delete(*, user: AbstractBaseUser, room_id: str | int) -> None:
    room = _room_for_owner(user=user, room_id=room_id)
    viewers = room_viewer_ids(room=room)
    _cancel_live_stream(room)
    streams_delete_for_keys(keys=[room.stream_key])
    room_pk = room.pk
    room.delete()
    events.room_gone_after_commit(room_pk, viewers, {"type": "room.deleted", "roomId": str(room_pk)})


# -- sharing, pins and archives ----------------------------------------------------------------


def _user_named(username: str) -> AbstractBaseUser:
    user_model = get_user_model()
    found = user_model.objects.filter(**{user_model.USERNAME_FIELD: username.strip()}, is_active=True).first()
    if found is None:
        raise ActionRefused("not_found", "No user with that name.")
    return found


@transaction.atomic
def room_share(*, user: AbstractBaseUser, room_id: str | int, username: str) -> Room:
    """Make someone a member: they see the room, its history and its live answers, and chat in it."""
    room = _room_for_owner(user=user, room_id=room_id)
    member = _user_named(username)
    if member.pk == room.owner_id:
        raise ActionRefused("bad_request", "You own this room already; share it with someone else.")
    _membership, created = Membership.objects.get_or_create(room=room, user=member)
    if not created:
        raise ActionRefused("bad_request", f"{member.get_username()} is already a member of this room.")
    events.rooms_changed_after_commit(room_viewer_ids(room=room))
    return room


@transaction.atomic
def room_unshare(*, user: AbstractBaseUser, room_id: str | int, username: str) -> Room:
    """Remove a member: the room leaves every connection of theirs at once, and their own marks on it go."""
    room = _room_for_owner(user=user, room_id=room_id)
    member = _user_named(username)
    removed, _by_model = Membership.objects.filter(room=room, user=member).delete()
    if not removed:
        raise ActionRefused("not_found", f"{member.get_username()} is not a member of this room.")
    RoomPreference.objects.filter(room=room, user=member).delete()
    events.member_removed_after_commit(room.pk, member.pk)
    events.rooms_changed_after_commit([*room_viewer_ids(room=room), member.pk])
    return room


@transaction.atomic
def room_pin(*, user: AbstractBaseUser, room_id: str | int, pinned: bool) -> Room:
    """Pin a room to the top of this user's own sidebar, or unpin it; nobody else's sidebar changes."""
    room = room_get_for_user(user=user, room_id=room_id)
    _mark_room(user=user, room=room, mark="pinned_at", on=pinned)
    return room


@transaction.atomic
def room_archive(*, user: AbstractBaseUser, room_id: str | int, archived: bool) -> Room:
    """Move a room out of this user's own sidebar into its Archived section, or back."""
    room = room_get_for_user(user=user, room_id=room_id)
    _mark_room(user=user, room=room, mark="archived_at", on=archived)
    return room


def _mark_room(*, user: AbstractBaseUser, room: Room, mark: str, on: bool) -> None:
    preference, _created = RoomPreference.objects.select_for_update().get_or_create(room=room, user=user)
    if on == (getattr(preference, mark) is not None):
        return  # already so: a repeat keeps the time it was first set
    setattr(preference, mark, timezone.now() if on else None)
    preference.save(update_fields=[mark])
    events.rooms_changed_after_commit([user.pk])


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
    title_wanted: bool = False  # the room is still named by default: title it after this answer


def _start_reply(*, user: AbstractBaseUser, room: Room, request_id: str, body: dict[str, Any] | None) -> ReplyStart:
    """Create the stream and the assistant's placeholder; `busy` if the room already streams,
    LimitReached if the user has STREAMS_PER_USER answers streaming already."""
    limits.check_live_answers(user=user)
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
        title_wanted=room.named_automatically,
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
    *, user: AbstractBaseUser, room_id: str | int, request_id: str, text: str, body: dict[str, Any] | None = None,
    attachment_ids: list[str] | None = None,
) -> ReplyStart:
    """Store the user's message (with the files it attaches) and start the assistant's answer."""
    room = room_get_for_user(user=user, room_id=room_id)
    _refuse_if_locked(room)
    _refuse_if_streaming(room)
    _check_body(body)
    attached = _attachments_to_send(user=user, room=room, attachment_ids=attachment_ids or [])
    message = Message.objects.create(room=room, role=Message.Role.USER, author=user, content=text,
                                     parts=[{"type": "text", "text": text}, *map(file_part, attached)])
    # Conditional: of two sends racing with the same upload, one links it and the other rolls back.
    linked = Attachment.objects.filter(pk__in=[a.pk for a in attached], message__isnull=True).update(message=message)
    if linked != len(attached):
        raise ActionRefused("not_found", "One of the attached files was just sent with another message.")
    events.room_frame_after_commit(
        room.pk, {"type": "message.created", "roomId": str(room.pk), "message": message_to_dict(message)}
    )
    return _start_reply(user=user, room=room, request_id=request_id, body=body)


def _attachments_to_send(*, user: AbstractBaseUser, room: Room, attachment_ids: list[str]) -> list[Attachment]:
    """The user's own unsent uploads to this room, in the order given; `not_found` for any other id,
    before anything is stored."""
    if len(attachment_ids) > ATTACHMENTS_PER_MESSAGE:
        raise ActionRefused("bad_request", f"A message may attach at most {ATTACHMENTS_PER_MESSAGE} files.")
    if len(set(attachment_ids)) != len(attachment_ids):
        raise ActionRefused("bad_request", "The same attachment is named twice.")
    wanted = [attachment_pk(raw) for raw in attachment_ids]
    found = {
        attachment.pk: attachment
        for attachment in Attachment.objects.filter(
            pk__in=[pk for pk in wanted if pk is not None], room=room, uploaded_by_id=user.pk, message__isnull=True
        ).defer("text")
    }
    for raw, pk in zip(attachment_ids, wanted):
        if pk not in found:
            raise ActionRefused("not_found", f"No unsent file of yours in this room has the id {raw[:64]!r}; "
                                             "attach it again.")
    return [found[pk] for pk in wanted]


def _remove_messages(room: Room, messages: list[Message]) -> None:
    _remove_message_ids(room.pk, [m.pk for m in messages])


def _remove_message_ids(room_id: int, message_ids: list[int]) -> int:
    """Delete messages in one statement and tell the room's viewers, after commit, which went. Their
    finished streams stay, unreferenced and harmless, until the room is cleared or deleted; their
    chunks go with cleanup_streams. How many were deleted."""
    if not message_ids:
        return 0
    _total, by_model = Message.objects.filter(pk__in=message_ids).delete()
    for message_id in message_ids:
        events.room_frame_after_commit(
            room_id, {"type": "message.removed", "roomId": str(room_id), "messageId": str(message_id)}
        )
    return by_model.get(Message._meta.label, 0)


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
def room_prune_messages(
    *, room_id: int, older_than: datetime | None = None, keep: int | None = None
) -> list[int]:
    """Remove a room's oldest messages, and after commit send `message.removed` for each and the room
    list to its viewers. Without rules: those beyond ROOM_MAX_MESSAGES. With `older_than` and/or
    `keep`: those `selectors.message_ids_to_prune` picks. A live answer's placeholder always stays.
    The ids removed, oldest first."""
    if older_than is None and keep is None:
        removed = _prune_room_beyond_limit(room_id)
    else:
        removed = message_ids_to_prune(older_than=older_than, keep=keep, room_id=room_id).get(room_id, [])
        _remove_message_ids(room_id, removed)
    room = Room.objects.only("id", "owner_id").filter(pk=room_id).first() if removed else None
    if room is not None:
        events.rooms_changed_after_commit(room_viewer_ids(room=room))
    return removed


PRUNE_BATCH_SIZE = 500


@dataclass(frozen=True)
class PruneResult:
    rooms: int  # rooms that lost messages
    messages: int  # messages deleted (or, in a dry run, that would be)


def messages_prune(
    *, older_than: datetime | None = None, keep: int | None = None, room_id: int | None = None,
    dry_run: bool = False, batch_size: int = PRUNE_BATCH_SIZE,
) -> PruneResult:
    """Prune every room (or one) by the same rules as `room_prune_messages`: the messages are picked
    in one query, then deleted room by room (a transaction per room, a DELETE per `batch_size`
    messages) and each room's viewers get `message.removed` and `rooms` after its commit. For the
    people who run the server (manage.py prune_messages): no permission check. `dry_run`: only counts.
    RoomNotFound for a `room_id` no room has."""
    if room_id is not None and not Room.objects.filter(pk=room_id).exists():
        raise RoomNotFound(room_id)
    planned = message_ids_to_prune(older_than=older_than, keep=keep, room_id=room_id)
    if dry_run:
        return PruneResult(rooms=len(planned), messages=sum(len(ids) for ids in planned.values()))
    deleted = rooms = 0
    for room_id, ids in planned.items():
        with transaction.atomic():
            gone = sum(_remove_message_ids(room_id, ids[start:start + batch_size])
                       for start in range(0, len(ids), batch_size))
            room = Room.objects.only("id", "owner_id").filter(pk=room_id).first()
            if room is not None and gone:
                events.rooms_changed_after_commit(room_viewer_ids(room=room))
        deleted += gone
        rooms += bool(gone)
    return PruneResult(rooms=rooms, messages=deleted)


@transaction.atomic
def chat_regenerate(
    *, user: AbstractBaseUser, room_id: str | int, request_id: str, body: dict[str, Any] | None = None
) -> ReplyStart:
    """Remove the answers after the last user message and answer it again. Messages staff hid are
    out of sight here as everywhere: never answered again, never removed (the moderation record stays)."""
    room = room_get_for_user(user=user, room_id=room_id)
    _refuse_if_locked(room)
    _refuse_if_streaming(room)
    _check_body(body)
    visible = Message.objects.filter(room=room, hidden_at__isnull=True)
    last_user = visible.filter(role=Message.Role.USER).order_by("-id").first()
    if last_user is None:
        raise ActionRefused("bad_request", "There is no message to answer again in this room.")
    _remove_messages(room, list(visible.filter(id__gt=last_user.pk)))
    return _start_reply(user=user, room=room, request_id=request_id, body=body)


@transaction.atomic
def chat_edit(
    *, user: AbstractBaseUser, room_id: str | int, message_id: str, text: str, request_id: str,
    body: dict[str, Any] | None = None,
) -> ReplyStart:
    """Replace the text of one of the user's messages, drop everything after it, answer again."""
    room = room_get_for_user(user=user, room_id=room_id)
    _refuse_if_locked(room)
    visible = Message.objects.filter(room=room, hidden_at__isnull=True)  # as in chat_regenerate
    try:
        message = visible.select_related("author").get(pk=int(message_id))
    except (ValueError, Message.DoesNotExist):
        raise ActionRefused("not_found", "No such message in this room.") from None
    if message.role != Message.Role.USER or message.author_id != user.pk:
        raise ActionRefused("forbidden", "You can only edit your own messages.")
    _refuse_if_streaming(room)
    _check_body(body)
    _remove_messages(room, list(visible.filter(id__gt=message.pk)))
    message.content = text
    # The files it attached stay attached: only the text is replaced.
    message.parts = [{"type": "text", "text": text}, *(p for p in message.parts if p.get("type") == "file")]
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
    tool_waits_end(stream_id=start.stream_id)
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



# -- feedback on answers -----------------------------------------------------------------------

_FEEDBACK_RATINGS = {name: value for value, name in FEEDBACK_RATING_NAMES.items()}


@transaction.atomic
def message_feedback_set(
    *, user: AbstractBaseUser, message_id: str | int, rating: str | None, comment: str = ""
) -> dict[str, str] | None:
    """Set the user's own thumbs "up" or "down" (and comment) on a finished assistant message in a
    room they can see, or remove it (rating None). After commit every connection of that user gets
    `message.feedback`; nobody else does. The new state, as the protocol has it."""
    if rating is not None and rating not in _FEEDBACK_RATINGS:
        raise ActionRefused("bad_request", 'A rating is "up", "down" or none.')
    comment = comment.strip()
    if len(comment) > FEEDBACK_COMMENT_MAX_LENGTH:
        raise ActionRefused("bad_request", f"A comment may be at most {FEEDBACK_COMMENT_MAX_LENGTH} characters.")
    visible = Message.objects.filter(room__in=rooms_visible_to(user), hidden_at__isnull=True).only(
        "id", "room_id", "role", "status")
    message = visible.filter(pk=int(message_id)).first() if str(message_id).isdecimal() else None
    if message is None:
        raise ActionRefused("not_found", "No such message.")
    if message.role != Message.Role.ASSISTANT or message.status == Message.Status.STREAMING:
        raise ActionRefused("not_found", "Only a finished answer of the assistant can be rated.")
    if rating is None:
        MessageFeedback.objects.filter(message=message, user_id=user.pk).delete()
        state = None
    else:
        MessageFeedback.objects.update_or_create(
            message=message, user_id=user.pk, defaults={"rating": _FEEDBACK_RATINGS[rating], "comment": comment}
        )
        state = feedback_to_dict(_FEEDBACK_RATINGS[rating], comment)
    frame = {"type": "message.feedback", "roomId": str(message.room_id), "messageId": str(message.pk),
             "feedback": state}
    events.send_after_commit(events.user_group(user.pk), {"type": "message.feedback", "frame": frame})
    return state


# -- text attachments --------------------------------------------------------------------------


@transaction.atomic
def attachment_upload(
    *, user: AbstractBaseUser, room_id: str | int, filename: str, size: int, read: Callable[[], bytes]
) -> Attachment:
    """Keep a text file the user will attach to their next message in this room. Refused
    (`bad_request`, or `too_large`) unless it is an accepted, small enough UTF-8 text file and the user
    has fewer than PENDING_UPLOADS_MAX uploads waiting. Uploads a day old and never sent are deleted here."""
    room = room_get_for_user(user=user, room_id=room_id)
    _refuse_if_locked(room)
    unsent = Attachment.objects.filter(uploaded_by_id=user.pk, message__isnull=True)
    unsent.filter(created_at__lt=timezone.now() - timedelta(hours=PENDING_MAX_AGE_HOURS)).delete()
    if unsent.count() >= PENDING_UPLOADS_MAX:
        raise ActionRefused("bad_request", f"You have {PENDING_UPLOADS_MAX} files waiting to be sent; "
                                           "send them or remove some first.")
    try:
        upload = read_text_file(filename=filename, size=size, read=read)
    except AttachmentRefused as refused:
        raise ActionRefused("too_large" if refused.status == 413 else "bad_request", refused.message) from None
    return Attachment.objects.create(room=room, uploaded_by=user, filename=upload.filename,
                                     media_type=upload.media_type, size=upload.size, text=upload.text)


@transaction.atomic
def attachment_discard(*, user: AbstractBaseUser, attachment_id: str | int) -> None:
    """Delete one of the user's own uploads that has not been sent; a sent one stays with its message."""
    deleted = 0
    if str(attachment_id).isdecimal():
        deleted, _ = Attachment.objects.filter(
            pk=int(attachment_id), uploaded_by_id=user.pk, message__isnull=True, room__in=rooms_visible_to(user)
        ).delete()
    if not deleted:
        raise ActionRefused("not_found", "No unsent file of yours has that id.")


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
def tool_wait_begin(*, start: ReplyStart, tool_call_id: str, tool_name: str, kind: str) -> None:
    """A reply now waits for an approval or a client's result of this call; answers are taken from here on."""
    PendingToolCall.objects.create(
        room_id=start.room_id, stream_id=start.stream_id, tool_call_id=tool_call_id, tool_name=tool_name, kind=kind
    )


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
    _refuse_if_locked(Room.objects.only("id", "locked_at").get(pk=chosen.room_id))
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


def tool_waits_end(*, stream_id: str | uuid.UUID) -> int:
    """A finished stream's calls that still wait for a person wait no more: they expire, so that no
    row says a call waits for an answer nobody can give. Called by whoever finishes the stream (its
    reply, or the sweep that finds it stale); how many calls expired."""
    return PendingToolCall.objects.filter(stream_id=stream_id, state=PendingToolCall.State.WAITING).update(
        state=PendingToolCall.State.EXPIRED)


def tool_answers_for_stream(*, stream_id: str) -> dict[str, ToolAnswer]:
    """Answers already taken for a stream's calls: how a reply hears of them if the channel layer lost the news."""
    answered = PendingToolCall.objects.filter(stream_id=stream_id, state=PendingToolCall.State.ANSWERED)
    return {w.tool_call_id: ToolAnswer(w.answer, w.answered_by_id) for w in answered}


# -- personal API tokens -----------------------------------------------------------------------

API_TOKEN_PREFIX = "crt_"
API_TOKENS_PER_USER = 20
# last_used_at is written at most this often per token, so that API reads stay reads.
API_TOKEN_TOUCH_SECONDS = 60


def _api_token_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@transaction.atomic
def api_token_create(*, user: AbstractBaseUser, name: str) -> tuple[ApiToken, str]:
    """A new token and its key, which is shown once and never stored (only its hash is)."""
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise ActionRefused("bad_request", "Give the token a name of 1 to 100 characters.")
    if ApiToken.objects.filter(user=user).count() >= API_TOKENS_PER_USER:
        raise ActionRefused("bad_request", f"You have {API_TOKENS_PER_USER} tokens already; revoke one first.")
    key = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, key_hash=_api_token_hash(key), prefix=key[:10])
    return token, key


@transaction.atomic
def api_token_revoke(*, user: AbstractBaseUser, token_id: int | str) -> None:
    try:
        deleted, _ = ApiToken.objects.filter(user=user, pk=int(token_id)).delete()
    except (TypeError, ValueError):
        deleted = 0
    if not deleted:
        raise ActionRefused("not_found", "No such token.")


def api_token_authenticate(*, key: str) -> AbstractBaseUser | None:
    """The active user whose token this is, else None; notes when the token was last used."""
    if not key.startswith(API_TOKEN_PREFIX) or len(key) > 100:
        return None
    token = ApiToken.objects.select_related("user").filter(key_hash=_api_token_hash(key)).first()
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > API_TOKEN_TOUCH_SECONDS:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


# -- import ------------------------------------------------------------------------------------

IMPORT_BATCH_SIZE = 500


@transaction.atomic
def room_import(*, user: AbstractBaseUser, data: Any) -> Room:
    """A new room owned by `user` from an export document (chatrooms/exports.py), in one transaction:
    every message with its content, parts, status and time, and its attachments. User messages are
    attributed to the importer (the original authors' names stay in the file only); a model this
    server does not offer becomes the default. ActionRefused, with nothing created, if the document
    is not a valid export."""
    try:
        imported = checked_import(data)
    except ImportRefused as refused:
        raise ActionRefused("bad_request", str(refused)) from None
    limit = settings.ROOM_MAX_MESSAGES
    if limit > 0 and len(imported.messages) > limit:
        raise ActionRefused("too_large", f"The export has {len(imported.messages)} messages; a room on this "
                                         f"server keeps at most {limit}.")
    room = Room.objects.create(
        owner=user, name=imported.name, system_prompt=imported.system_prompt,
        model=imported.model if is_known_model(imported.model) else default_model(),
    )
    # auto_now_add has set the times to now: put the export's back.
    Room.objects.filter(pk=room.pk).update(created_at=imported.created_at)
    room.created_at = imported.created_at
    messages = Message.objects.bulk_create(
        [
            Message(room=room, role=entry.role, author=user if entry.role == Message.Role.USER else None,
                    content=entry.content, parts=copy.deepcopy(entry.parts), status=entry.status)
            for entry in imported.messages
        ],
        batch_size=IMPORT_BATCH_SIZE,
    )
    for message, entry in zip(messages, imported.messages):
        message.created_at = entry.created_at
    Message.objects.bulk_update(messages, ["created_at"], batch_size=IMPORT_BATCH_SIZE)
    _import_attachments(user=user, room=room, messages=messages, imported=imported.messages)
    events.rooms_changed_after_commit([user.pk])
    return room


def _import_attachments(
    *, user: AbstractBaseUser, room: Room, messages: list[Message], imported: list[ImportedMessage]
) -> None:
    """Attachment rows for the imported messages; each file part that linked to the exported copy of
    a file (same name and type) now links to the new one. A file part whose file is not in the import
    loses its link: the id was another server's (or room's), and here it would name some other file."""
    for message, entry in zip(messages, imported):
        unmatched = Attachment.objects.bulk_create([
            Attachment(room=room, message=message, uploaded_by=user, filename=a.filename, media_type=a.media_type,
                       size=len(a.text.encode()), text=a.text)
            for a in entry.attachments
        ]) if entry.attachments else []
        linked = False
        for part in message.parts:
            if part.get("type") != "file" or not DOWNLOAD_URL.match(str(part.get("url", ""))):
                continue
            linked = True
            same = next((a for a in unmatched if (a.filename, a.media_type) == (part.get("filename"),
                                                                                part.get("mediaType"))), None)
            if same is not None:
                unmatched.remove(same)
                part["url"] = download_url(same.pk)
            else:
                del part["url"]
        if entry.attachments or linked:
            Message.objects.filter(pk=message.pk).update(parts=message.parts)


# -- moderation --------------------------------------------------------------------------------
# Staff only. Each service refuses anyone else (`forbidden`), writes one AuditLogEntry per object it
# changed in its own transaction, and tells the viewers after commit. The plural forms are what the
# admin's bulk actions call: a fixed number of queries however many objects are selected.

AUDIT_ROOM_LOCK = "room.lock"
AUDIT_ROOM_UNLOCK = "room.unlock"
AUDIT_ROOM_CLEAR = "room.clear"
AUDIT_MESSAGE_HIDE = "message.hide"
AUDIT_MESSAGE_UNHIDE = "message.unhide"
AUDIT_STREAM_ABORT = "stream.abort"
AUDIT_ROOM_EXPORT = "room.export"


def _require_staff(user: AbstractBaseUser) -> None:
    if not getattr(user, "is_staff", False):
        raise ActionRefused("forbidden", "Only staff may moderate.")


def _audit(
    *, staff: AbstractBaseUser, action: str, objects: list[Any], details: Callable[[Any], dict[str, Any]] | None = None
) -> None:
    """One AuditLogEntry per object, in one INSERT, in the caller's transaction."""
    AuditLogEntry.objects.bulk_create([
        AuditLogEntry(actor=staff, actor_username=staff.get_username(), action=action,
                      object_type=obj._meta.model_name, object_id=str(obj.pk), object_repr=str(obj)[:200],
                      details=details(obj) if details else {})
        for obj in objects
    ])


def _int_ids(raw: Iterable[str | int]) -> list[int]:
    """Ids as integers; anything that is not one matches nothing."""
    return [int(value) for value in raw if str(value).isdigit()]


def _uuid_ids(raw: Iterable[str | uuid.UUID]) -> list[uuid.UUID]:
    ids = []
    for value in raw:
        try:
            ids.append(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
        except ValueError:
            continue  # matches nothing
    return ids


def _staff_room(*, staff: AbstractBaseUser, room_id: str | int) -> Room:
    _require_staff(staff)
    room = Room.objects.filter(pk__in=_int_ids([room_id])).first()
    if room is None:
        raise ActionRefused("not_found", "No such room.")
    return room


def _rooms_changed_for(room_ids: set[int]) -> None:
    """`rooms` to everyone who sees any of these rooms: their message counts changed."""
    if room_ids:
        rooms = list(Room.objects.filter(pk__in=room_ids).only("id", "owner_id"))
        events.rooms_changed_after_commit(room_viewer_ids_for_rooms(rooms=rooms))


@transaction.atomic
def rooms_lock(*, staff: AbstractBaseUser, room_ids: Iterable[str | int]) -> list[Room]:
    """Make rooms read-only for everyone (every write into them is refused `forbidden`, see
    _refuse_if_locked); after commit `rooms` (with `locked: true`) to their viewers. Rooms locked
    already are left as they are. The rooms locked now."""
    return _set_rooms_locked(staff=staff, room_ids=room_ids, locked=True)


@transaction.atomic
def rooms_unlock(*, staff: AbstractBaseUser, room_ids: Iterable[str | int]) -> list[Room]:
    """Open locked rooms again; after commit `rooms` to their viewers. The rooms unlocked now."""
    return _set_rooms_locked(staff=staff, room_ids=room_ids, locked=False)


def _set_rooms_locked(*, staff: AbstractBaseUser, room_ids: Iterable[str | int], locked: bool) -> list[Room]:
    _require_staff(staff)
    changing = list(
        Room.objects.select_for_update().filter(pk__in=_int_ids(room_ids), locked_at__isnull=locked)
        .only("id", "name", "owner_id", "locked_at")
    )
    if not changing:
        return []
    locked_at = timezone.now() if locked else None
    Room.objects.filter(pk__in=[room.pk for room in changing]).update(locked_at=locked_at)
    for room in changing:
        room.locked_at = locked_at
    _audit(staff=staff, action=AUDIT_ROOM_LOCK if locked else AUDIT_ROOM_UNLOCK, objects=changing)
    events.rooms_changed_after_commit(room_viewer_ids_for_rooms(rooms=changing))
    return changing


@transaction.atomic
def room_lock(*, staff: AbstractBaseUser, room_id: str | int) -> Room:
    """Lock one room (see rooms_lock); `not_found` if there is no such room."""
    room = _staff_room(staff=staff, room_id=room_id)
    rooms_lock(staff=staff, room_ids=[room.pk])
    room.refresh_from_db(fields=["locked_at"])
    return room


@transaction.atomic
def room_unlock(*, staff: AbstractBaseUser, room_id: str | int) -> Room:
    """Unlock one room (see rooms_unlock); `not_found` if there is no such room."""
    room = _staff_room(staff=staff, room_id=room_id)
    rooms_unlock(staff=staff, room_ids=[room.pk])
    room.refresh_from_db(fields=["locked_at"])
    return room


@transaction.atomic
def rooms_clear_by_staff(*, staff: AbstractBaseUser, room_ids: Iterable[str | int]) -> list[Room]:
    """Clear rooms as their owners can (room_clear), locked or not: after commit `room.cleared` and
    `rooms` to their viewers. The audit row keeps how many messages went. The rooms cleared."""
    _require_staff(staff)
    rooms = list(Room.objects.filter(pk__in=_int_ids(room_ids)).annotate(messages_before=Count("messages")))
    if not rooms:
        return []
    _clear_rooms(rooms)
    _audit(staff=staff, action=AUDIT_ROOM_CLEAR, objects=rooms,
           details=lambda room: {"messagesDeleted": room.messages_before})
    return rooms


@transaction.atomic
def room_clear_by_staff(*, staff: AbstractBaseUser, room_id: str | int) -> Room:
    """Clear one room (see rooms_clear_by_staff); `not_found` if there is no such room."""
    room = _staff_room(staff=staff, room_id=room_id)
    return rooms_clear_by_staff(staff=staff, room_ids=[room.pk])[0]


@transaction.atomic
def rooms_export_by_staff(*, staff: AbstractBaseUser, room_ids: Iterable[str | int]) -> list[dict[str, Any]]:
    """The export documents of rooms (see selectors.room_transcripts_for_staff), for staff. It shows
    people's conversations, so it is audited like the actions that change them."""
    _require_staff(staff)
    exported = room_transcripts_for_staff(room_ids=_int_ids(room_ids))
    _audit(staff=staff, action=AUDIT_ROOM_EXPORT, objects=[room for room, _document in exported])
    return [document for _room, document in exported]


@transaction.atomic
def message_hide(*, staff: AbstractBaseUser, message_ids: Iterable[str | int]) -> list[Message]:
    """Hide finished messages from everyone but staff: they leave every history, page, count, export,
    search and the model's context. After commit `message.removed` for each to its room's viewers,
    and `rooms` (the counts changed). Messages hidden already or still streaming are left as they
    are. One UPDATE and one INSERT however many; the messages hidden now."""
    _require_staff(staff)
    hiding = list(
        Message.objects.select_for_update()
        .filter(pk__in=_int_ids(message_ids), hidden_at__isnull=True)
        .exclude(status=Message.Status.STREAMING)
        .only("id", "room_id", "role", "content")
        .order_by("id")
    )
    if not hiding:
        return []
    Message.objects.filter(pk__in=[m.pk for m in hiding]).update(hidden_at=timezone.now(), hidden_by=staff)
    _audit(staff=staff, action=AUDIT_MESSAGE_HIDE, objects=hiding, details=lambda m: {"roomId": m.room_id})
    for message in hiding:
        events.room_frame_after_commit(
            message.room_id, {"type": "message.removed", "roomId": str(message.room_id), "messageId": str(message.pk)}
        )
    _rooms_changed_for({m.room_id for m in hiding})
    return hiding


@transaction.atomic
def message_unhide(*, staff: AbstractBaseUser, message_ids: Iterable[str | int]) -> list[Message]:
    """Show hidden messages again: after commit `message.created` for each (oldest first) to its
    room's viewers, and `rooms`. The messages shown now."""
    _require_staff(staff)
    showing = list(
        Message.objects.select_for_update(of=("self",))
        .filter(pk__in=_int_ids(message_ids), hidden_at__isnull=False)
        .select_related("author")
        .order_by("id")
    )
    if not showing:
        return []
    Message.objects.filter(pk__in=[m.pk for m in showing]).update(hidden_at=None, hidden_by=None)
    _audit(staff=staff, action=AUDIT_MESSAGE_UNHIDE, objects=showing, details=lambda m: {"roomId": m.room_id})
    for message in showing:
        message.hidden_at = message.hidden_by = None
        events.room_frame_after_commit(
            message.room_id, {"type": "message.created", "roomId": str(message.room_id),
                              "message": message_to_dict(message)}
        )
    _rooms_changed_for({m.room_id for m in showing})
    return showing


@transaction.atomic
def streams_abort_by_staff(*, staff: AbstractBaseUser, stream_ids: Iterable[str | uuid.UUID]) -> list[Stream]:
    """Stop live answers wherever they run, as chat.cancel does: the stream's flag (read by its
    worker's heartbeat) and, after commit, `stream.cancel` to its control group. The worker stores
    what streamed with status `aborted` and sends `stream.done` `aborted` to the room. Streams that
    have ended are left as they are. The streams asked to stop."""
    _require_staff(staff)
    live = list(
        Stream.objects.filter(pk__in=_uuid_ids(stream_ids), status=Stream.Status.STREAMING)
        .only("id", "key", "request_id", "status")
    )
    stopping = set(streams_request_cancel(stream_ids=[stream.pk for stream in live]))
    aborted = [stream for stream in live if str(stream.pk) in stopping]
    for stream in aborted:
        events.stream_cancel_after_commit(str(stream.pk))
    _audit(staff=staff, action=AUDIT_STREAM_ABORT, objects=aborted,
           details=lambda stream: {"key": stream.key, "requestId": stream.request_id})
    return aborted


@transaction.atomic
def stream_abort_by_staff(*, staff: AbstractBaseUser, stream_id: str | uuid.UUID) -> bool:
    """Stop one live answer (see streams_abort_by_staff); False if it is not streaming (or unknown)."""
    return bool(streams_abort_by_staff(staff=staff, stream_ids=[stream_id]))
