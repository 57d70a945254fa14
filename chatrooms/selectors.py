"""Reads. Every read of a room goes through `room_get_for_user`, the one permission-checked door."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
import re
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.postgres.search import SearchHeadline, SearchQuery, SearchRank, SearchVector
from django.db import connection
from django.utils import timezone
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Exists, OuterRef, Prefetch, Q, QuerySet
from django.db.models import Subquery
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from datetime import timedelta

from streaming.replay import chunks_after, last_chunk_index

from .models import ApiToken, Membership, Message, Room, RoomPreference
from .shapes import message_to_dict, room_to_dict
from .models import Attachment, MessageFeedback
from .shapes import feedback_to_dict
from .exports import export_document

MESSAGES_PAGE_SIZE = 200


class RoomNotFound(Exception):
    """The room does not exist or the user may not see it; the two are indistinguishable."""


def rooms_visible_to(user: AbstractBaseUser) -> QuerySet[Room]:
    member_of = Membership.objects.filter(user_id=user.pk).values("room_id")
    return Room.objects.filter(Q(owner_id=user.pk) | Q(pk__in=member_of))


def _annotated(rooms: QuerySet[Room], viewer: AbstractBaseUser | None = None) -> QuerySet[Room]:
    annotated = rooms.select_related("owner").annotate(
        # Messages staff hid are not counted: nobody but staff sees them.
        message_count=Count("messages", filter=~Q(messages__status=Message.Status.STREAMING)
                            & Q(messages__hidden_at__isnull=True)),
        is_streaming=Exists(Message.objects.filter(room_id=OuterRef("pk"), status=Message.Status.STREAMING)),
    )
    return annotated.annotate(**_preferences_of(viewer)) if viewer is not None else annotated


def _preferences_of(viewer: AbstractBaseUser) -> dict[str, Exists]:
    """The viewer's own pin and archive marks, as columns of the room query itself (no query per room)."""
    own = RoomPreference.objects.filter(room_id=OuterRef("pk"), user_id=viewer.pk)
    return {
        "pinned_by_viewer": Exists(own.filter(pinned_at__isnull=False)),
        "archived_by_viewer": Exists(own.filter(archived_at__isnull=False)),
    }


def _with_members(rooms: QuerySet[Room]) -> QuerySet[Room]:
    """The members of every room in one more query, whatever the number of rooms."""
    return rooms.prefetch_related(Prefetch("members", queryset=get_user_model().objects.only("id", "username")))


def room_get_for_user(*, user: AbstractBaseUser, room_id: str | int) -> Room:
    """The room if this user may see it, else RoomNotFound, whether or not it exists."""
    try:
        pk = int(room_id)
    except (TypeError, ValueError):
        raise RoomNotFound(room_id) from None
    room = _annotated(rooms_visible_to(user), user).filter(pk=pk).first()
    if room is None:
        raise RoomNotFound(room_id)
    return room


def room_check_access(*, user: AbstractBaseUser, room_id: str | int) -> None:
    """RoomNotFound unless this user may see the room: room_get_for_user's check alone, one EXISTS, for
    the checks a socket repeats (its periodic re-check, a gap fill, a catch-up)."""
    try:
        pk = int(room_id)
    except (TypeError, ValueError):
        raise RoomNotFound(room_id) from None
    if not rooms_visible_to(user).filter(pk=pk).exists():
        raise RoomNotFound(room_id)


def room_list_for_user(*, user: AbstractBaseUser) -> list[dict[str, Any]]:
    """Every room the user can see, most recently active first, as protocol dicts (two queries)."""
    rooms = _with_members(_annotated(rooms_visible_to(user), user)).order_by("-last_active_at", "-pk")
    return [room_to_dict(room) for room in rooms]


def room_viewer_ids(*, room: Room) -> list[int]:
    """The users who can see a room: its owner and its members."""
    return [room.owner_id, *Membership.objects.filter(room=room).values_list("user_id", flat=True)]


def room_member_names(*, room: Room) -> list[str]:
    """The usernames of the people a room is shared with, sorted; its owner is not one of them."""
    return sorted(member.username for member in room.members.all())


@dataclass(frozen=True)
class RoomSidebar:
    """The page's sidebar: pinned rooms first, then the others, each most recently active first;
    archived rooms apart. chat.js's renderRooms orders the `rooms` frame the same way."""

    rooms: list[dict[str, Any]]
    archived: list[dict[str, Any]]


def room_sidebar_for_user(*, user: AbstractBaseUser) -> RoomSidebar:
    listed = room_list_for_user(user=user)
    shown = [room for room in listed if not room["archived"]]
    return RoomSidebar(
        rooms=[room for room in shown if room["pinned"]] + [room for room in shown if not room["pinned"]],
        archived=[room for room in listed if room["archived"]],
    )


def messages_for_room(
    *, room: Room, limit: int = MESSAGES_PAGE_SIZE, viewer: AbstractBaseUser | None = None
) -> list[dict[str, Any]]:
    """The newest `limit` finished messages, oldest first; with a `viewer`, each assistant message
    carries that viewer's own `feedback` (in the same query)."""
    newest = (
        Message.objects.filter(room=room, hidden_at__isnull=True)
        .exclude(status=Message.Status.STREAMING)
        .select_related("author")
        .order_by("-id")
    )
    if viewer is not None:
        newest = with_viewer_feedback(newest, viewer=viewer)
    return [_message_dict_for_viewer(message) for message in reversed(list(newest[:limit]))]


def with_viewer_feedback(messages: QuerySet[Message], *, viewer: AbstractBaseUser) -> QuerySet[Message]:
    """Messages with the viewer's own rating and comment as columns of the same query
    (`viewer_rating`, `viewer_comment`; None where the viewer gave none), not a query per message."""
    own = MessageFeedback.objects.filter(message_id=OuterRef("pk"), user_id=viewer.pk)
    return messages.annotate(viewer_rating=Subquery(own.values("rating")[:1]),
                             viewer_comment=Subquery(own.values("comment")[:1]))


def _message_dict_for_viewer(message: Message) -> dict[str, Any]:
    as_dict = message_to_dict(message)
    if message.role == Message.Role.ASSISTANT and hasattr(message, "viewer_rating"):
        as_dict["feedback"] = feedback_to_dict(message.viewer_rating, message.viewer_comment)
    return as_dict


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
    cursor_valid: bool = True  # False: the join's `since` could not be honest (see cursor_is_possible)
    replay_from: int = 0  # the first index the replay may send


def room_snapshot_for_user(*, user: AbstractBaseUser, room_id: str, since: dict[str, Any] | None) -> RoomSnapshot:
    room = room_get_for_user(user=user, room_id=room_id)
    live = live_stream_for_room(room=room)
    cursor_valid = since is None or cursor_is_possible(room=room, live=live, since=since)
    replay: list[tuple[int, str]] = []
    first = 0
    if live is not None:
        if since and cursor_valid and since["streamId"] == live.stream_id:
            first = since["index"] + 1
        replay = chunks_after(stream_id=live.stream_id, after_index=first - 1)
    # Read last, so that it decides: an answer that ended after the reads above is already among
    # the messages, final, and must not also be replayed as live (its stream.done is dropped as known).
    messages = messages_for_room(room=room, viewer=user)
    if live is not None and any(message["id"] == str(live.message_id) for message in messages):
        live, replay, first = None, [], 0
    return RoomSnapshot(str(room.pk), messages, live, replay, cursor_valid, first)


def cursor_is_possible(*, room: Room, live: LiveStream | None, since: dict[str, Any]) -> bool:
    """Whether a joining client's `since` can be true: it names a stream of this room and, for the live
    one, an index no further than its stored chunks plus the most the recorder may still hold (a full
    buffer and the batch being written). An id from another room, or from before a database reset,
    names no stream of this room."""
    if live is not None and since["streamId"] == live.stream_id:
        unstored_at_most = 2 * settings.STREAM_BUFFER_MAX_CHUNKS
        return since["index"] <= last_chunk_index(stream_id=live.stream_id) + unstored_at_most
    try:
        stream_id = uuid.UUID(since["streamId"])
    except ValueError:
        return False
    return Message.objects.filter(room=room, stream_id=stream_id).exists()


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
    """The finished messages a reply is an answer to, oldest first, with their attachments (one
    more query, whatever the number of messages)."""
    return list(
        Message.objects.filter(room_id=room_id, id__lt=before_message_id, hidden_at__isnull=True)
        .exclude(status=Message.Status.STREAMING)
        .order_by("id")
        .prefetch_related(Prefetch("attachments", queryset=Attachment.objects.order_by("id")))
    )


def attachment_get_for_user(*, user: AbstractBaseUser, attachment_id: str | int) -> Attachment | None:
    """An attachment in a room the user can see. Once sent it is anyone's there; before that only
    its uploader's. None otherwise, whether or not it exists."""
    try:
        pk = int(attachment_id)
    except (TypeError, ValueError):
        return None
    return (
        Attachment.objects.filter(pk=pk, room__in=rooms_visible_to(user))
        .filter(Q(message__isnull=False) | Q(uploaded_by_id=user.pk))
        .exclude(message__hidden_at__isnull=False)  # staff hid its message: gone with it
        .first()
    )


def first_exchange_for_room(*, room_id: int) -> tuple[str, str] | None:
    """The text of a room's first user message and of the first complete answer, for its title."""
    shown = Message.objects.filter(room_id=room_id, hidden_at__isnull=True)
    first_user = shown.filter(role=Message.Role.USER).order_by("id").first()
    first_answer = shown.filter(role=Message.Role.ASSISTANT, status=Message.Status.COMPLETE).order_by("id").first()
    if first_user is None:
        return None
    return first_user.content, first_answer.content if first_answer else ""


@dataclass(frozen=True)
class StreamProgress:
    """A stream as the database has it: chunks after an index, and its stream.done frame once ended."""

    message_id: str
    request_id: str
    chunks: list[tuple[int, str]]
    done: dict[str, Any] | None


def stream_progress_for_room(
    *, user: AbstractBaseUser, room_id: str, stream_id: str, after_index: int
) -> StreamProgress | None:
    """None if the stream is not (or no longer) one of this room's; RoomNotFound if the user can no longer
    see the room (a catch-up must not outlive a removal whose event was lost)."""
    room_check_access(user=user, room_id=room_id)
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


def stream_chunks_for_user(
    *, user: AbstractBaseUser, room_id: str, stream_id: str, after_index: int, up_to: int
) -> list[tuple[int, str]]:
    """A viewer's gap fill: chunks after_index+1..up_to of a stream of the room, RoomNotFound if the user
    can no longer see the room."""
    room_check_access(user=user, room_id=room_id)
    return chunks_after(stream_id=stream_id, after_index=after_index, up_to=up_to)


@dataclass(frozen=True)
class MessagePage:
    """Finished messages for a page, oldest first, and where the next older page starts."""

    messages: list[Message]
    older_before: int | None


def message_page_for_room(
    *, room: Room, before_id: int | None, limit: int, viewer: AbstractBaseUser | None = None
) -> MessagePage:
    """With a `viewer`, each message has that viewer's feedback (see `with_viewer_feedback`)."""
    queryset = (Message.objects.filter(room=room, hidden_at__isnull=True).exclude(status=Message.Status.STREAMING)
                .select_related("author"))
    if viewer is not None:
        queryset = with_viewer_feedback(queryset, viewer=viewer)
    if before_id is not None:
        queryset = queryset.filter(id__lt=before_id)
    newest = list(queryset.order_by("-id")[: limit + 1])
    has_older = len(newest) > limit
    messages = list(reversed(newest[:limit]))
    return MessagePage(messages, messages[0].pk if has_older and messages else None)


def message_get_in_room(*, room: Room, message_id: int, viewer: AbstractBaseUser | None = None) -> Message | None:
    found = Message.objects.filter(room=room, pk=message_id, hidden_at__isnull=True).exclude(
        status=Message.Status.STREAMING)
    if viewer is not None:
        found = with_viewer_feedback(found, viewer=viewer)
    return found.select_related("author").first()


def api_tokens_for_user(*, user: AbstractBaseUser) -> list[ApiToken]:
    return list(ApiToken.objects.filter(user_id=user.pk).order_by("-created_at"))


# -- search ------------------------------------------------------------------------------------

SEARCH_QUERY_MAX_LENGTH = 200
SEARCH_RESULTS_LIMIT = 20
# PostgreSQL's text search configuration: how words are split and stemmed ("deploying" finds "deploy").
SEARCH_TEXT_CONFIG = "english"
SNIPPET_CONTEXT_CHARS = 60
# ts_headline marks matches with these; characters nobody types, so the snippet is cut into plain
# text pieces that the template escapes (no HTML from the database reaches the page).
_MATCH_START, _MATCH_END = "\x02", "\x03"


@dataclass(frozen=True)
class SnippetPiece:
    text: str
    match: bool


@dataclass(frozen=True)
class RoomHit:
    room_id: int
    name: str
    archived: bool


@dataclass(frozen=True)
class MessageHit:
    message_id: int
    room_id: int
    room_name: str
    room_archived: bool
    role: str
    author: str | None
    created_at: datetime
    snippet: list[SnippetPiece]


@dataclass(frozen=True)
class SearchResults:
    query: str
    rooms: list[RoomHit]
    messages: list[MessageHit]


def search_query_cleaned(query: str) -> str:
    """The query as searched: no NUL (PostgreSQL refuses it), trimmed, at most SEARCH_QUERY_MAX_LENGTH."""
    return query.replace("\x00", "").strip()[:SEARCH_QUERY_MAX_LENGTH].strip()


def search_for_user(*, user: AbstractBaseUser, query: str, limit: int = SEARCH_RESULTS_LIMIT) -> SearchResults:
    """Rooms whose name and finished messages whose text match, in the rooms this user can see
    (archived ones too), best and newest first, up to `limit` of each. PostgreSQL: full-text search
    (websearch syntax, ranked) plus substring matches, so that a half-typed word finds something;
    other databases: a case-insensitive substring search."""
    query = search_query_cleaned(query)
    if not query or limit <= 0:
        return SearchResults(query, [], [])
    visible = rooms_visible_to(user)
    archived = RoomPreference.objects.filter(user_id=user.pk, archived_at__isnull=False)
    rooms = visible.annotate(archived_by_searcher=Exists(archived.filter(room_id=OuterRef("pk"))))
    messages = (
        Message.objects.filter(room__in=visible, hidden_at__isnull=True)
        .exclude(status=Message.Status.STREAMING)
        .annotate(room_archived=Exists(archived.filter(room_id=OuterRef("room_id"))))
        .select_related("room", "author")
    )
    if connection.vendor == "postgresql":
        rooms, messages = _full_text_matches(rooms, messages, query)
    else:
        rooms = rooms.filter(name__icontains=query).order_by("-last_active_at", "-pk")
        messages = messages.filter(content__icontains=query).order_by("-created_at", "-id")
    return SearchResults(
        query,
        [RoomHit(room.pk, room.name, room.archived_by_searcher) for room in rooms[:limit]],
        [_message_hit(message, query) for message in messages[:limit]],
    )


def _full_text_matches(
    rooms: QuerySet[Room], messages: QuerySet[Message], query: str
) -> tuple[QuerySet[Room], QuerySet[Message]]:
    words = SearchQuery(query, search_type="websearch", config=SEARCH_TEXT_CONFIG)
    room_words = SearchVector("name", config=SEARCH_TEXT_CONFIG)
    rooms = (
        rooms.annotate(words=room_words, rank=SearchRank(room_words, words))
        .filter(Q(words=words) | Q(name__icontains=query))
        .order_by("-rank", "-last_active_at", "-pk")
    )
    message_words = SearchVector("content", config=SEARCH_TEXT_CONFIG)
    messages = (
        messages.annotate(words=message_words, rank=SearchRank(message_words, words))
        .filter(Q(words=words) | Q(content__icontains=query))
        .annotate(headline=SearchHeadline(
            "content", words, config=SEARCH_TEXT_CONFIG, start_sel=_MATCH_START, stop_sel=_MATCH_END,
            min_words=8, max_words=24, max_fragments=2, fragment_delimiter=" … ",
        ))
        .order_by("-rank", "-created_at", "-id")
    )
    return rooms, messages


def _message_hit(message: Message, query: str) -> MessageHit:
    headline = getattr(message, "headline", None)
    # A substring-only match (a half-typed word) has no marked headline: cut the snippet here.
    snippet = _marked_pieces(headline) if headline and _MATCH_START in headline else _substring_snippet(
        message.content, query)
    return MessageHit(
        message_id=message.pk,
        room_id=message.room_id,
        room_name=message.room.name,
        room_archived=message.room_archived,
        role=message.role,
        author=message.author.username if message.role == Message.Role.USER and message.author else None,
        created_at=message.created_at,
        snippet=snippet,
    )


def _marked_pieces(headline: str) -> list[SnippetPiece]:
    pieces = re.split(f"[{_MATCH_START}{_MATCH_END}]", headline)
    return [SnippetPiece(text, index % 2 == 1) for index, text in enumerate(pieces) if text]


def _substring_snippet(text: str, query: str) -> list[SnippetPiece]:
    found = re.search(re.escape(query), text, flags=re.IGNORECASE)
    if found is None:  # a case this database folds and Python does not: show the start
        return [SnippetPiece(_clipped(text, 2 * SNIPPET_CONTEXT_CHARS), False)]
    start, end = found.span()
    before = text[max(0, start - SNIPPET_CONTEXT_CHARS):start]
    after = text[end:end + SNIPPET_CONTEXT_CHARS]
    return [
        SnippetPiece(("…" if start > len(before) else "") + before, False),
        SnippetPiece(text[start:end], True),
        SnippetPiece(after + ("…" if end + len(after) < len(text) else ""), False),
    ]


def _clipped(text: str, length: int) -> str:
    return text if len(text) <= length else text[:length] + "…"


def messages_to_reach(*, room: Room, message_id: int, context: int) -> int | None:
    """How many of the newest finished messages a page must hold to show this one with `context`
    messages before it; None if it is not a finished message of this room."""
    counts = (
        Message.objects.filter(room=room, hidden_at__isnull=True)
        .exclude(status=Message.Status.STREAMING)
        .aggregate(found=Count("pk", filter=Q(pk=message_id)), from_it=Count("pk", filter=Q(pk__gte=message_id)))
    )
    return counts["from_it"] + context if counts["found"] else None


# -- export ------------------------------------------------------------------------------------


def room_export_for_user(*, user: AbstractBaseUser, room_id: str | int) -> dict[str, Any]:
    """The export document (chatrooms/exports.py) of a room this user can see: every finished
    message with its parts and attachments, oldest first. RoomNotFound otherwise."""
    return _room_export(room_get_for_user(user=user, room_id=room_id))


def room_export_for_operator(*, room_id: str | int) -> dict[str, Any]:
    """The export document of any room, for the people who run the server (manage.py export_room):
    no permission check, so never call it with a room id a user chose. RoomNotFound if there is none."""
    try:
        room = Room.objects.get(pk=int(room_id))
    except (TypeError, ValueError, Room.DoesNotExist):
        raise RoomNotFound(room_id) from None
    return _room_export(room)


def _room_export(room: Room) -> dict[str, Any]:
    messages = (
        Message.objects.filter(room=room, hidden_at__isnull=True)  # staff hid them: no transcript holds them
        .exclude(status=Message.Status.STREAMING)
        .select_related("author")
        .prefetch_related(Prefetch("attachments", queryset=Attachment.objects.order_by("id")))
        .order_by("id")
    )
    return export_document(room=room, messages=list(messages), exported_at=timezone.now())


# -- limits and maintenance --------------------------------------------------------------------


def live_answer_count_for_user(*, user_id: int) -> int:
    """How many live answers this user asked for, in every room. A Stream knows only its room: the
    one who asked is the author of the user message just before the answer's placeholder (so a
    regenerate counts for whoever wrote the question it answers again). One query; the partial
    unique index on streaming messages finds the live ones."""
    asker = (
        Message.objects.filter(room_id=OuterRef("room_id"), role=Message.Role.USER, pk__lt=OuterRef("pk"))
        .order_by("-pk")
        .values("author_id")[:1]
    )
    return (
        Message.objects.filter(status=Message.Status.STREAMING)
        .annotate(asker_id=Subquery(asker))
        .filter(asker_id=user_id)
        .count()
    )


def message_ids_to_prune(
    *, older_than: datetime | None = None, keep: int | None = None, room_id: int | None = None
) -> dict[int, list[int]]:
    """Finished messages to delete, by room, oldest first: those created before `older_than` and,
    with `keep`, not among the `keep` newest finished messages of their room (both rules when both
    are given). A live answer's placeholder is never one, nor counted. In one query for all rooms."""
    if older_than is None and keep is None:
        raise ValueError("give older_than, keep or both")
    finished = Message.objects.exclude(status=Message.Status.STREAMING)
    if room_id is not None:
        finished = finished.filter(room_id=room_id)
    if keep is not None:
        # The rank is taken over every finished message of the room, before the age filter below.
        finished = finished.annotate(
            newest_rank=Window(RowNumber(), partition_by=[F("room_id")], order_by=F("id").desc())
        ).filter(newest_rank__gt=keep)
        rows = ((room, pk) for room, pk, created in finished.values_list("room_id", "id", "created_at").iterator()
                if older_than is None or created < older_than)
    else:
        rows = finished.filter(created_at__lt=older_than).values_list("room_id", "id").iterator()
    by_room: dict[int, list[int]] = {}
    for room, pk in rows:
        by_room.setdefault(room, []).append(pk)
    return {room: sorted(ids) for room, ids in by_room.items()}


@dataclass(frozen=True)
class TokenUsage:
    answers: int  # assistant messages that reported usage
    input_tokens: int
    output_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class ChatStats:
    rooms: int
    messages: dict[str, dict[str, int]]  # role -> status -> count
    streams: dict[str, int]  # status -> count
    usage: TokenUsage
    usage_by_model: dict[str, TokenUsage]
    active_users_day: int
    active_users_week: int


def chat_stats(*, now: datetime | None = None) -> ChatStats:
    """Counts for the people who run the server: rooms, messages by role and status, streams by
    status, tokens reported by answers (their `data-usage` parts), and active users (who wrote a
    message in the last 24 hours and 7 days). Token usage is read in Python, a batch of answers at a
    time, since the parts are a JSON list no database sums portably."""
    from streaming.models import Stream

    now = now or timezone.now()
    messages: dict[str, dict[str, int]] = {}
    for role, status, count in Message.objects.order_by().values_list("role", "status").annotate(n=Count("id")):
        messages.setdefault(role, {})[status] = count
    streams = dict(Stream.objects.order_by().values_list("status").annotate(n=Count("id")))
    totals: dict[str, list[int]] = {}
    answers = Message.objects.filter(role=Message.Role.ASSISTANT).order_by().values_list("parts", flat=True)
    for parts in answers.iterator(chunk_size=500):
        usage = _usage_of(parts)
        if usage is not None:
            model, counts = usage
            into = totals.setdefault(model, [0, 0, 0, 0])
            into[0] += 1
            for position, count in enumerate(counts, start=1):
                into[position] += count
    by_model = {model: TokenUsage(*counts) for model, counts in sorted(totals.items())}
    authors = Message.objects.filter(role=Message.Role.USER, author__isnull=False).order_by()
    return ChatStats(
        rooms=Room.objects.count(),
        messages=messages,
        streams=streams,
        usage=TokenUsage(*(sum(column) for column in zip(*totals.values()))) if totals else TokenUsage(0, 0, 0, 0),
        usage_by_model=by_model,
        active_users_day=authors.filter(created_at__gte=now - timedelta(days=1)).values("author_id").distinct().count(),
        active_users_week=authors.filter(created_at__gte=now - timedelta(days=7)).values("author_id").distinct().count(),
    )


def _usage_of(parts: Any) -> tuple[str, tuple[int, int, int]] | None:
    """(model, (input, output, total)) of an answer's `data-usage` part; None without a usable one."""
    if not isinstance(parts, list):
        return None
    for part in parts:
        if isinstance(part, dict) and part.get("type") == "data-usage" and isinstance(part.get("data"), dict):
            data = part["data"]
            counts = tuple(data.get(name) for name in ("inputTokens", "outputTokens", "totalTokens"))
            if all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                return str(data.get("model") or "unknown"), counts  # type: ignore[return-value]
    return None


# -- moderation --------------------------------------------------------------------------------
# Staff only: these read across every room, with no user's door in front. Callers check is_staff.

MODERATION_RECENT_MESSAGES = 50
MODERATION_EXCERPT_CHARS = 160


def room_viewer_ids_for_rooms(*, rooms: list[Room]) -> set[int]:
    """Everyone who can see any of these rooms (owners and members), in one query however many rooms."""
    members = Membership.objects.filter(room_id__in=[room.pk for room in rooms]).values_list("user_id", flat=True)
    return {room.owner_id for room in rooms} | set(members)


@dataclass(frozen=True)
class LiveStreamRow:
    """A stream running now, as the moderation page lists it."""

    stream_id: str
    room_id: int
    room_name: str
    asked_by: str | None  # the author of the question being answered (a Stream knows only its room)
    started_at: datetime
    age_seconds: int
    stopping: bool  # asked to stop (a cancel or an abort); its worker has not ended it yet

    @property
    def age_text(self) -> str:
        minutes, seconds = divmod(self.age_seconds, 60)
        return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def live_streams_for_moderation() -> list[LiveStreamRow]:
    """Every answer streaming now, across all rooms, oldest first; one query."""
    asker = (
        Message.objects.filter(room_id=OuterRef("room_id"), role=Message.Role.USER, pk__lt=OuterRef("pk"))
        .order_by("-pk")
        .values("author__username")[:1]
    )
    live = (
        Message.objects.filter(status=Message.Status.STREAMING, stream__isnull=False)
        .select_related("room", "stream")
        .only("id", "room__id", "room__name", "stream__id", "stream__created_at", "stream__cancel_requested")
        .annotate(asked_by=Subquery(asker))
        .order_by("stream__created_at")
    )
    now = timezone.now()
    return [
        LiveStreamRow(
            stream_id=str(message.stream.pk), room_id=message.room.pk, room_name=message.room.name,
            asked_by=message.asked_by, started_at=message.stream.created_at,
            age_seconds=max(0, int((now - message.stream.created_at).total_seconds())),
            stopping=message.stream.cancel_requested,
        )
        for message in live
    ]


def recent_messages_for_moderation(*, limit: int = MODERATION_RECENT_MESSAGES) -> list[Message]:
    """The newest finished messages across all rooms, newest first, hidden ones too; one query.
    Each has `excerpt`, its first MODERATION_EXCERPT_CHARS characters."""
    newest = (
        Message.objects.exclude(status=Message.Status.STREAMING)
        .select_related("room", "author", "hidden_by")
        .only("id", "role", "status", "content", "created_at", "hidden_at", "room__id", "room__name",
              "author__id", "author__username", "hidden_by__id", "hidden_by__username")
        .order_by("-id")[:limit]
    )
    messages = list(newest)
    for message in messages:
        message.excerpt = _clipped(" ".join(message.content.split()), MODERATION_EXCERPT_CHARS)
    return messages


def room_transcripts_for_staff(*, room_ids: list[int]) -> list[tuple[Room, dict[str, Any]]]:
    """Each of these rooms with its export document (chatrooms/exports.py), as its people see it (hidden
    messages left out, as in every export), in the order of `room_ids`; three queries however many rooms."""
    rooms = {room.pk: room for room in Room.objects.filter(pk__in=room_ids)}
    messages = (
        Message.objects.filter(room_id__in=list(rooms), hidden_at__isnull=True)
        .exclude(status=Message.Status.STREAMING)
        .select_related("author")
        .prefetch_related(Prefetch("attachments", queryset=Attachment.objects.order_by("id")))
        .order_by("id")
    )
    by_room: dict[int, list[Message]] = {pk: [] for pk in rooms}
    for message in messages:
        by_room[message.room_id].append(message)
    now = timezone.now()
    return [(rooms[pk], export_document(room=rooms[pk], messages=by_room[pk], exported_at=now))
            for pk in room_ids if pk in rooms]
