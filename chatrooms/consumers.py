"""ChatConsumer: protocol frames in, services called, frames out; it also keeps each stream gapless."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from autobahn.exception import Disconnected
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from django.conf import settings

from streaming.safe_json import utf8_text

from . import assistant, events, limits, recovery, selectors, services
from .catalog import model_choices
from .models import PendingToolCall
from .protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    chunk_frame_prefix,
    chunk_frame_text,
    error_frame,
    frame_ref,
    parse_frame,
    transient_frame_text,
    validate_frame,
)
from .selectors import RoomNotFound
from .shapes import room_to_dict
from .services import ActionRefused
from .limits import LimitReached
from .session_guard import SessionGuard

logger = logging.getLogger(__name__)

# How many flush intervals a viewer waits for the recorder to store chunks it missed.
GAP_FILL_ATTEMPTS = 50
# A tracked stream quiet this long is checked against the database (then twice as long, up to the max).
QUIET_CHECK_SECONDS = 2.0
QUIET_CHECK_MAX_SECONDS = 30.0


class ChatConsumer(AsyncWebsocketConsumer):
    """One browser tab or script. It has at most one active room and tracks, per live stream of that
    room, the next chunk index it owes the client."""

    client_gone = False  # the client left mid-frame, or the socket failed; see send()
    accepted = False
    released = False  # see _release()
    user: Any = None
    socket_counted = False
    active_room: str | None = None
    _watchdog: asyncio.Task[None] | None = None
    _rechecker: asyncio.Task[None] | None = None

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' own dispatch, without its `close_old_connections` before every message: that runs on
        the process's one shared database thread, so while any query there waits (a locked table) every
        socket of the worker stopped receiving, live chunks included. Our database calls go through
        database_sync_to_async, which closes old connections around each call on the thread it uses.

        Whatever a handler raises ends here: raised out of dispatch, it ended the consumer with 1011 and
        Channels never called disconnect(), so the socket count, the groups and the tasks leaked. A handler
        of a layer event whose permission-checked read finds the active room gone (RoomNotFound) leaves it."""
        if self.released and message["type"] != "websocket.disconnect":
            return  # failed and released: only daphne's disconnect is still to come
        handler = getattr(self, get_handler_name(message), None)
        try:
            if handler is None:
                raise ValueError(f"No handler for message type {message['type']}")
            try:
                await handler(message)
            except RoomNotFound:
                await self._room_lost(self.active_room)
        except StopConsumer:
            raise
        except Exception:
            logger.exception("socket of user %s failed on %s", getattr(self.user, "pk", None), message["type"])
            await self._fail()
            if message["type"] == "websocket.disconnect":
                raise StopConsumer() from None

    async def _fail(self) -> None:
        """Something raised that no handler expected: the client is told (`error` `internal`, once the
        socket was accepted), everything the socket held is released, and then it closes with 1011 (so
        that a client reconnecting at once finds its place free)."""
        if self.released:
            return
        try:
            if self.accepted:
                await self.send_json(error_frame("internal", "Something went wrong on the server; reconnect."))
        except Exception as error:  # noqa: BLE001  (the socket is going anyway)
            logger.warning("telling a failed socket failed (%s: %s)", type(error).__name__, error)
        self.client_gone = True  # nothing more is sent to it
        await self._release()
        try:
            await self.close(code=1011)
        except Exception as error:  # noqa: BLE001
            logger.warning("closing a failed socket failed (%s: %s)", type(error).__name__, error)

    async def _release(self) -> None:
        """Give back, exactly once, all the socket holds: its place in the user's socket count, its tasks,
        its groups and its channel. Each step alone, so that one failing (Redis down) keeps no other."""
        if self.released:
            return
        self.released = True
        for task in (self._watchdog, self._rechecker):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        layer = self.channel_layer
        steps = []
        if self.socket_counted:
            self.socket_counted = False
            steps.append(limits.asocket_closed(user_id=self.user.pk))
        if self.active_room is not None:
            steps.append(layer.group_discard(events.room_group(self.active_room), self.channel_name))
        if self.user is not None and self.user.is_authenticated:
            steps.append(layer.group_discard(events.user_group(self.user.pk), self.channel_name))
        steps.append(events.channel_release(self.channel_name))
        for step in steps:
            try:
                await step
            except Exception as error:  # noqa: BLE001
                logger.warning("releasing %s: a step failed (%s: %s)", self.channel_name, type(error).__name__, error)

    def _start_task(self, work: Any) -> asyncio.Task[None]:
        """A task of this socket's: should it raise, the socket fails like a handler that raised."""
        async def guarded() -> None:
            try:
                await work
            except Exception:
                logger.exception("a task of the socket of user %s failed", self.user.pk)
                await self._fail()
        return asyncio.get_running_loop().create_task(guarded())

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        await super().accept(subprotocol, headers)
        self.accepted = True

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=4401)  # before accept: the handshake is refused with 403
            return
        self.session = SessionGuard(user_id=self.user.pk,
                                    session_key=getattr(self.scope.get("session"), "session_key", None))
        try:
            self.socket_counted = await limits.asocket_open(user_id=self.user.pk)
        except LimitReached:
            # Accepted, then closed before any data frame: the client can read why from the close code.
            await self.accept()
            await self.close(code=limits.TOO_MANY_SOCKETS_CLOSE_CODE)
            return
        self.streams: dict[str, StreamCursor] = {}  # live streams of the active room
        self.known_messages: set[str] = set()  # ids of messages this connection has been sent
        await self.channel_layer.group_add(events.user_group(self.user.pk), self.channel_name)
        self._rechecker = self._start_task(self._recheck_periodically())
        recovery.ensure_sweeper()
        await self.accept()
        await self.send_json({
            "type": "hello",
            "user": {"id": str(self.user.pk), "username": self.user.get_username()},
            "protocol": PROTOCOL_VERSION,
            "models": list(model_choices()),
        })
        await self._send_rooms()

    async def disconnect(self, code: int) -> None:
        await self._release()

    async def send_json(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(frame, ensure_ascii=False))

    async def send(self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False) -> None:
        """Every frame to the client goes through here. A client that left while a frame was on its way
        (its closing handshake begun, daphne's `websocket.disconnect` not yet delivered) makes autobahn
        raise Disconnected: that ends nothing here, the frames after it are dropped, and disconnect()
        still runs when the event comes. Raised out of a handler, it ended the consumer without
        disconnect(), leaking the user's socket count and group memberships (tests/faults/test_churn.py)."""
        if self.client_gone:
            return
        if text_data is not None:
            text_data = utf8_text(text_data)  # a lone surrogate made daphne's encode raise, ending the consumer
        try:
            await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        except Disconnected:
            self.client_gone = True

    # -- client frames -----------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        ref = None
        try:
            if not await self.session.holds():
                await self._refuse_ended_session(text_data)
                return
            frame = parse_frame(text_data, bytes_data)
            ref = frame_ref(frame)
            kind, fields = validate_frame(frame)
            await limits.acount_frame(user_id=self.user.pk, kind=kind)
            await getattr(self, "on_" + kind.replace(".", "_"))(ref=ref, **fields)
        except LimitReached as error:
            retry = {"retryAfter": error.retry_after} if error.retry_after is not None else {}
            await self.send_json(error_frame(error.code, error.message, ref, **retry))
        except ProtocolError as error:
            await self.send_json(error_frame(error.code, error.message, ref))
        except ActionRefused as error:
            await self.send_json(error_frame(error.code, error.message, ref))
        except RoomNotFound:
            await self.send_json(error_frame("not_found", "No such room.", ref))
        except Exception:
            logger.exception("frame from user %s failed", self.user.pk)
            await self.send_json(error_frame("internal", "Something went wrong on the server.", ref))

    async def _refuse_ended_session(self, text_data: str | None) -> None:
        """The session expired, logged out or lost its user: the frame is refused unread (only its
        `ref` is echoed) and the socket closes as if it had never logged in."""
        try:
            ref = frame_ref(parse_frame(text_data, None))
        except ProtocolError:
            ref = None
        await self.send_json(error_frame("forbidden", "Your session has ended; log in again.", ref))
        await self.close(code=4401)

    async def session_ended(self, event: dict[str, Any]) -> None:
        """One of this user's sessions logged out: this socket closes if it was that session's."""
        if self.session.heard_logout(event["session"]):
            await self.close(code=4401)

    async def on_room_create(self, *, ref: str | None, name: str) -> None:
        room = await database_sync_to_async(services.room_create)(user=self.user, name=name)
        room_dict = await database_sync_to_async(self._room_dict)(room.pk)
        await self.send_json(_with_ref({"type": "room.created", "room": room_dict}, ref))

    def _room_dict(self, room_id: int) -> dict[str, Any]:
        return room_to_dict(selectors.room_get_for_user(user=self.user, room_id=room_id))

    async def on_room_rename(self, *, ref: str | None, roomId: str, name: str) -> None:  # noqa: N803
        await database_sync_to_async(services.room_rename)(user=self.user, room_id=roomId, name=name)
        await self.send_json(_with_ref({"type": "ack"}, ref))

    async def on_room_configure(
        self, *, ref: str | None, roomId: str, model: str | None = None, systemPrompt: str | None = None  # noqa: N803
    ) -> None:
        await database_sync_to_async(services.room_configure)(
            user=self.user, room_id=roomId, model=model, system_prompt=systemPrompt
        )
        await self.send_json(_with_ref({"type": "ack"}, ref))

    async def on_room_clear(self, *, ref: str | None, roomId: str) -> None:  # noqa: N803
        await database_sync_to_async(services.room_clear)(user=self.user, room_id=roomId)
        await self.send_json(_with_ref({"type": "ack"}, ref))

    async def on_room_delete(self, *, ref: str | None, roomId: str) -> None:  # noqa: N803
        await database_sync_to_async(services.room_delete)(user=self.user, room_id=roomId)
        await self.send_json(_with_ref({"type": "ack"}, ref))

    async def on_room_share(self, *, ref: str | None, roomId: str, username: str) -> None:  # noqa: N803
        await database_sync_to_async(services.room_share)(user=self.user, room_id=roomId, username=username)
        await self.send_json(_with_ref({"type": "ack"}, ref))

    async def on_room_unshare(self, *, ref: str | None, roomId: str, username: str) -> None:  # noqa: N803
        await database_sync_to_async(services.room_unshare)(user=self.user, room_id=roomId, username=username)
        await self.send_json(_with_ref({"type": "ack"}, ref))

    async def on_room_pin(self, *, ref: str | None, roomId: str, pinned: bool) -> None:  # noqa: N803
        await database_sync_to_async(services.room_pin)(user=self.user, room_id=roomId, pinned=pinned)
        await self.send_json(_with_ref({"type": "ack"}, ref))

    async def on_room_archive(self, *, ref: str | None, roomId: str, archived: bool) -> None:  # noqa: N803
        await database_sync_to_async(services.room_archive)(user=self.user, room_id=roomId, archived=archived)
        await self.send_json(_with_ref({"type": "ack"}, ref))

    async def on_room_join(self, *, ref: str | None, roomId: str, since: dict[str, Any] | None = None) -> None:  # noqa: N803
        await self._join(roomId, since, ref)

    async def on_room_leave(self, *, ref: str | None, roomId: str) -> None:  # noqa: N803
        await database_sync_to_async(selectors.room_get_for_user)(user=self.user, room_id=roomId)
        await self._leave()
        await self.send_json(_with_ref({"type": "ack"}, ref))

    async def on_chat_send(
        self, *, ref: str | None, requestId: str, text: str, roomId: str | None = None,  # noqa: N803
        body: dict[str, Any] | None = None, attachments: list[str] | None = None,
    ) -> None:
        room_id = await self._room_to_stream_in(roomId)
        start = await database_sync_to_async(services.chat_send)(
            user=self.user, room_id=room_id, request_id=requestId, text=text, body=body, attachment_ids=attachments
        )
        assistant.start_reply(start)

    async def on_message_feedback(
        self, *, ref: str | None, messageId: str, rating: str | None = None, comment: str | None = None,  # noqa: N803
    ) -> None:
        await database_sync_to_async(services.message_feedback_set)(
            user=self.user, message_id=messageId, rating=rating, comment=comment or ""
        )
        await self.send_json(_with_ref({"type": "ack"}, ref))

    async def on_chat_regenerate(
        self, *, ref: str | None, requestId: str, roomId: str | None = None, body: dict[str, Any] | None = None,  # noqa: N803
    ) -> None:
        room_id = await self._room_to_stream_in(roomId)
        start = await database_sync_to_async(services.chat_regenerate)(
            user=self.user, room_id=room_id, request_id=requestId, body=body
        )
        assistant.start_reply(start)

    async def on_chat_edit(
        self, *, ref: str | None, requestId: str, messageId: str, text: str, body: dict[str, Any] | None = None,  # noqa: N803
    ) -> None:
        if self.active_room is None:
            raise ActionRefused("bad_request", "Join a room before editing its messages.")
        start = await database_sync_to_async(services.chat_edit)(
            user=self.user, room_id=self.active_room, message_id=messageId, text=text, request_id=requestId, body=body
        )
        assistant.start_reply(start)

    async def on_chat_cancel(self, *, ref: str | None, requestId: str) -> None:  # noqa: N803
        stream_id = await database_sync_to_async(self._cancel)(requestId)
        if stream_id is None:
            raise ActionRefused("not_found", "No answer with that requestId is streaming.")
        await self.send_json(_with_ref({"type": "ack"}, ref))
        # Its worker may be gone (killed): then nobody would act on the cancel until the stale sweep.
        recovery.finish_cancelled_if_orphaned(stream_id)

    async def on_tool_result(self, *, ref: str | None, requestId: str, toolCallId: str, output: Any) -> None:  # noqa: N803
        await database_sync_to_async(services.tool_call_answer)(
            user=self.user, tool_call_id=toolCallId, kind=PendingToolCall.Kind.CLIENT, answer={"output": output},
            prefer_room_id=self.active_room,
        )
        await self.send_json(_with_ref({"type": "ack"}, ref))

    async def on_tool_approval(self, *, ref: str | None, requestId: str, toolCallId: str, approved: bool) -> None:  # noqa: N803
        await database_sync_to_async(services.tool_call_answer)(
            user=self.user, tool_call_id=toolCallId, kind=PendingToolCall.Kind.APPROVAL,
            answer={"approved": approved}, prefer_room_id=self.active_room,
        )
        await self.send_json(_with_ref({"type": "ack"}, ref))

    def _cancel(self, request_id: str) -> str | None:
        """The id of the stream asked to stop, None if no such answer is streaming."""
        live = selectors.live_stream_for_user_request(
            user=self.user, request_id=request_id, prefer_room_id=self.active_room
        )
        if live is None or not services.chat_cancel(user=self.user, room=live[0], stream_id=live[1].stream_id):
            return None
        return live[1].stream_id

    async def _room_to_stream_in(self, room_id: str | None) -> str:
        """The room a chat frame is for. Naming a room that is not active joins it first, so that the
        sender watches the answer it asked for."""
        if room_id is None:
            if self.active_room is None:
                raise ActionRefused("bad_request", "Give `roomId` or join a room first.")
            return self.active_room
        if room_id != self.active_room:
            await self._join(room_id, None, None)
        return self.active_room  # type: ignore[return-value]  (set by the join)

    # -- joining and leaving -----------------------------------------------------------------

    async def _join(self, room_id: str, since: dict[str, Any] | None, ref: str | None) -> None:
        # Subscribe first, read the database second, drop live chunks already sent third.
        await database_sync_to_async(selectors.room_get_for_user)(user=self.user, room_id=room_id)
        await self._leave()
        self.active_room = str(int(room_id))
        try:
            await self.channel_layer.group_add(events.room_group(self.active_room), self.channel_name)
            await database_sync_to_async(recovery.streams_recover_stale)(room_id=int(self.active_room))
            snapshot = await database_sync_to_async(selectors.room_snapshot_for_user)(
                user=self.user, room_id=self.active_room, since=since
            )
        except Exception:  # RoomNotFound, or the layer or the database failed: the join did not happen
            await self._leave()
            raise
        self.known_messages = {message["id"] for message in snapshot.messages}
        if not snapshot.cursor_valid:
            await self._send_stale_cursor(since["streamId"])  # type: ignore[index]
        await self.send_json(_with_ref({"type": "messages", "roomId": snapshot.room_id,
                                        "messages": snapshot.messages}, ref))
        live = snapshot.live
        if live is None:
            return
        first = snapshot.replay_from
        await self.send_json({"type": "stream.resuming", "roomId": snapshot.room_id, "requestId": live.request_id,
                              "streamId": live.stream_id, "fromIndex": first})
        cursor = self._track(live.stream_id, live.request_id, str(live.message_id), first)
        cursor.claimed_through = first - 1
        await self._send_chunks(cursor, snapshot.replay, replay=True)
        replayed = [index for index, _ in snapshot.replay if first <= index < cursor.next_index]
        await self.send_json({"type": "stream.replay_complete", "roomId": snapshot.room_id,
                              "streamId": live.stream_id, "lastIndex": replayed[-1] if replayed else -1})

    async def _send_stale_cursor(self, stream_id: str) -> None:
        """The client's place in a stream cannot be true: it is told to drop what it shows of that stream;
        the room's state follows in full (the join's `messages`, or the stream's `stream.done`)."""
        await self.send_json(error_frame(
            "stale_cursor", "This page's place in the room's answer is out of date; the room is shown afresh.",
            roomId=self.active_room, streamId=stream_id))

    async def _end_stream(self, cursor: StreamCursor, done: dict[str, Any]) -> None:
        """Stop tracking a stream and send its `stream.done`, after `stale_cursor` if the client had
        claimed chunks the stream never had."""
        self.streams.pop(cursor.stream_id, None)
        if cursor.claimed_through > done["lastIndex"]:
            await self._send_stale_cursor(cursor.stream_id)
        await self.send_json(done)

    async def _leave(self) -> None:
        if self.active_room is not None:
            await self.channel_layer.group_discard(events.room_group(self.active_room), self.channel_name)
        self.active_room = None
        self.streams.clear()
        self.known_messages = set()

    def _track(self, stream_id: str, request_id: str, message_id: str, next_index: int) -> StreamCursor:
        prefix = chunk_frame_prefix(room_id=self.active_room, request_id=request_id, stream_id=stream_id)  # type: ignore[arg-type]
        cursor = self.streams[stream_id] = StreamCursor(stream_id, request_id, message_id, next_index, prefix)
        self.known_messages.add(message_id)
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = self._start_task(self._watch_quiet_streams())
        return cursor

    # -- events from the channel layer -------------------------------------------------------

    async def rooms_changed(self, event: dict[str, Any]) -> None:
        await self._send_rooms()

    async def message_feedback(self, event: dict[str, Any]) -> None:
        """This user's feedback changed (on any connection of theirs): every connection hears of it."""
        await self.send_json(event["frame"])

    async def _send_rooms(self) -> None:
        rooms = await database_sync_to_async(selectors.room_list_for_user)(user=self.user)
        await self.send_json({"type": "rooms", "rooms": rooms})

    async def room_frame(self, event: dict[str, Any]) -> None:
        if event["roomId"] != self.active_room:
            return
        frame = event["frame"]
        kind = frame["type"]
        if kind == "message.created":
            if frame["message"]["id"] in self.known_messages:
                return  # committed between this connection's subscribe and its read: already sent
            self.known_messages.add(frame["message"]["id"])
        elif kind == "stream.start":
            if frame["streamId"] in self.streams or frame["messageId"] in self.known_messages:
                return  # this connection's join already saw the stream
            self._track(frame["streamId"], frame["requestId"], frame["messageId"], 0)
        elif kind == "message.removed":
            # Staff may show a hidden message again: its message.created must then pass the check above.
            self.known_messages.discard(frame["messageId"])
        elif kind == "stream.done":
            cursor = self.streams.get(frame["streamId"])
            if cursor is not None:
                await self._fill_gap(cursor, frame["lastIndex"])
                self.known_messages.add(frame["message"]["id"])
                await self._end_stream(cursor, frame)
                return
            if frame["message"]["id"] in self.known_messages:
                return  # joined after it ended: `messages` already held the final message
            self.known_messages.add(frame["message"]["id"])
        await self.send_json(frame)

    async def room_gone(self, event: dict[str, Any]) -> None:
        if event["roomId"] != self.active_room:
            return
        if event["frame"]["type"] == "room.deleted":
            await self._leave()
        else:
            self.streams.clear()
        await self.send_json(event["frame"])

    async def room_access_lost(self, event: dict[str, Any]) -> None:
        """This user was removed from a room: it goes as if deleted. Events are handled one at a time, so
        a stream of that room being sent is not cut mid-batch; after this, none of its frames pass."""
        await self._room_lost(event["roomId"])

    async def _room_lost(self, room_id: str | None) -> None:
        """The user can no longer see this room (told by an event, or found by a check of this socket's)."""
        if room_id is None:
            return
        if room_id == self.active_room:
            await self._leave()
        await self.send_json({"type": "room.deleted", "roomId": room_id})

    async def stream_chunks(self, event: dict[str, Any]) -> None:
        if event["roomId"] != self.active_room:
            return
        cursor = self.streams.get(event["streamId"])
        if cursor is None:
            # Its stream.start never arrived (a dropped message): catch up from the database.
            await self._catch_up(event["streamId"], event["requestId"], unknown=True)
            cursor = self.streams.get(event["streamId"])
            if cursor is None:
                return
        chunks = event["chunks"]
        if chunks[0][0] > cursor.next_index:
            # The channel layer dropped something: take the missing chunks from the database.
            await self._fill_gap(cursor, chunks[0][0] - 1)
        await self._send_chunks(cursor, chunks, replay=False)

    async def stream_transient(self, event: dict[str, Any]) -> None:
        """A transient data part: live viewers get it once, as `stream.data`; nobody gets it later."""
        if event["roomId"] != self.active_room or event["streamId"] not in self.streams:
            return
        await self.send(text_data=transient_frame_text(
            room_id=event["roomId"], request_id=event["requestId"], stream_id=event["streamId"], body=event["body"]))

    async def stream_check(self, event: dict[str, Any]) -> None:
        """A tracked stream has been quiet: make sure nothing was lost on the way."""
        cursor = self.streams.get(event["streamId"])
        if cursor is not None and self.active_room is not None:
            # Re-subscribe in case the layer expired this connection from its groups.
            await self.channel_layer.group_add(events.room_group(self.active_room), self.channel_name)
            await self.channel_layer.group_add(events.user_group(self.user.pk), self.channel_name)
            await self._catch_up(cursor.stream_id, cursor.request_id, unknown=False)

    async def _catch_up(self, stream_id: str, request_id: str, *, unknown: bool) -> None:
        """Bring one stream up to date from the database: chunks this connection still owes, and
        stream.done if it has ended (its own message may have been lost)."""
        cursor = self.streams.get(stream_id)
        after = cursor.next_index - 1 if cursor else -1
        # Stream-path reads run off the shared database thread (thread_sensitive=False), like the
        # recorder's writes: a query waiting there (a locked table) must not hold up this stream's relay.
        progress = await database_sync_to_async(selectors.stream_progress_for_room, thread_sensitive=False)(
            user=self.user, room_id=self.active_room, stream_id=stream_id, after_index=after
        )
        if progress is None:
            self.streams.pop(stream_id, None)
            return
        if cursor is None:
            if not unknown or progress.message_id in self.known_messages:
                return
            await self.send_json({"type": "stream.start", "roomId": self.active_room, "requestId": request_id,
                                  "streamId": stream_id, "messageId": progress.message_id})
            cursor = self._track(stream_id, progress.request_id, progress.message_id, 0)
        await self._send_chunks(cursor, progress.chunks, replay=False)
        if progress.done is not None and cursor.next_index > progress.done["lastIndex"]:
            await self._end_stream(cursor, progress.done)

    async def _recheck_periodically(self) -> None:
        """Every SESSION_RECHECK_SECONDS (and every half group expiry of a layer that has one, if shorter),
        read the session and the active room's access again, then join the groups again: a lost
        `session.ended` or `room.access.lost` delays a logout or a removal by that long at most, a passive
        socket included, and a long-open socket is never left out of its groups by a layer that expires
        them. The read is one call off the shared database thread, here in the task: what it finds lost
        goes to the consumer through its own channel, handled in order with everything else."""
        expiry = getattr(self.channel_layer, "group_expiry", None)
        while True:
            interval = settings.SESSION_RECHECK_SECONDS if not expiry else min(settings.SESSION_RECHECK_SECONDS,
                                                                                 expiry / 2)
            await asyncio.sleep(max(1.0, interval))
            room = self.active_room
            try:
                holds, sees_room = await self.session.recheck(user=self.user, room_id=room)
                if not holds:
                    await self.channel_layer.send(self.channel_name, {"type": "session.ended",
                                                                      "session": self.session.digest})
                elif not sees_room:
                    await self.channel_layer.send(self.channel_name, {"type": "room.access.lost", "roomId": room})
                else:
                    await self.channel_layer.group_add(events.user_group(self.user.pk), self.channel_name)
                    if room is not None and room == self.active_room:
                        await self.channel_layer.group_add(events.room_group(room), self.channel_name)
            except Exception as error:  # noqa: BLE001  (the database or the layer is down: again next turn)
                logger.warning("re-checking the socket %s failed (%s: %s)", self.channel_name,
                               type(error).__name__, error)

    async def _watch_quiet_streams(self) -> None:
        """While streams are tracked, ask the consumer (through its own channel, so the check runs in
        order with everything else) to check each one that has been quiet for a while."""
        while self.streams:
            await asyncio.sleep(QUIET_CHECK_SECONDS / 2)
            now = time.monotonic()
            for cursor in list(self.streams.values()):
                if now - cursor.last_activity >= cursor.quiet_after:
                    cursor.quiet_after = min(cursor.quiet_after * 2, QUIET_CHECK_MAX_SECONDS)
                    cursor.last_activity = now
                    try:
                        await self.channel_layer.send(self.channel_name, {"type": "stream.check",
                                                                          "streamId": cursor.stream_id})
                    except Exception as error:  # the layer is down (Redis restarting): ask again later
                        logger.warning("stream %s: could not ask for a check (%s: %s)", cursor.stream_id,
                                       type(error).__name__, error)

    async def _send_chunks(self, cursor: StreamCursor, chunks: list[tuple[int, str]] | list[list[Any]],
                           *, replay: bool) -> None:
        expected = cursor.next_index
        for index, body in chunks:
            if index < expected:
                continue  # already sent
            if index > expected:
                break  # never skip: the caller fills gaps first
            await self.send(text_data=chunk_frame_text(cursor.frame_prefix, index, body, replay=replay))
            expected += 1
        if expected != cursor.next_index:
            cursor.next_index = expected
            cursor.heard_from()

    async def _fill_gap(self, cursor: StreamCursor, through: int) -> None:
        """Send chunks next_index..through from the database, waiting for the recorder's flush if the
        live relay got ahead of it."""
        if cursor.next_index > through:
            return
        logger.info("stream %s: filling chunks %d..%d from the database", cursor.stream_id, cursor.next_index, through)
        # Off the shared thread, as above; RoomNotFound if the user lost the room (dispatch then leaves it).
        read = database_sync_to_async(selectors.stream_chunks_for_user, thread_sensitive=False)
        for _attempt in range(GAP_FILL_ATTEMPTS):
            stored = await read(user=self.user, room_id=self.active_room, stream_id=cursor.stream_id,
                                after_index=cursor.next_index - 1, up_to=through)
            await self._send_chunks(cursor, stored, replay=False)
            if cursor.next_index > through:
                return
            await asyncio.sleep(settings.STREAM_FLUSH_MS / 1000)
        logger.error("stream %s: chunks %d..%d never reached the database", cursor.stream_id,
                     cursor.next_index, through)
        await self.send_json(error_frame("internal", "Part of this answer was lost; reload the room.",
                                         roomId=self.active_room, streamId=cursor.stream_id))
        cursor.next_index = through + 1


class StreamCursor:
    """What one connection has sent of one live stream, and when it last heard of it."""

    __slots__ = ("stream_id", "request_id", "message_id", "frame_prefix", "next_index", "claimed_through",
                 "last_activity", "quiet_after")

    def __init__(self, stream_id: str, request_id: str, message_id: str, next_index: int, frame_prefix: str) -> None:
        self.stream_id = stream_id
        self.request_id = request_id
        self.message_id = message_id
        self.frame_prefix = frame_prefix  # of its `stream.chunk` frames
        self.next_index = next_index
        self.claimed_through = -1  # the last index the client said it had when it joined
        self.heard_from()

    def heard_from(self) -> None:
        self.last_activity = time.monotonic()
        self.quiet_after = QUIET_CHECK_SECONDS


def _with_ref(frame: dict[str, Any], ref: str | None) -> dict[str, Any]:
    if ref is not None:
        frame["ref"] = ref
    return frame
