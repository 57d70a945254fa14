"""ChatConsumer: protocol frames in, services called, frames out; it also keeps each stream gapless."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from streaming.replay import chunks_after

from . import assistant, events, recovery, selectors, services
from .catalog import model_choices
from .protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    chunk_frame_text,
    error_frame,
    frame_ref,
    parse_frame,
    room_to_dict,
    validate_frame,
)
from .selectors import RoomNotFound
from .services import ActionRefused

logger = logging.getLogger(__name__)

# How long a viewer waits for the recorder to store chunks it missed on the channel layer.
GAP_FILL_ATTEMPTS = 50


class ChatConsumer(AsyncWebsocketConsumer):
    """One browser tab or script. It has at most one active room and tracks, per live stream of that
    room, the next chunk index it owes the client."""

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=4401)  # before accept: the handshake is refused with 403
            return
        self.active_room: str | None = None
        self.next_index: dict[str, int] = {}  # stream id -> next index this client needs
        self.stream_request: dict[str, str] = {}
        await self.channel_layer.group_add(events.user_group(self.user.pk), self.channel_name)
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
        if getattr(self, "active_room", None) is not None:
            await self.channel_layer.group_discard(events.room_group(self.active_room), self.channel_name)
        if getattr(self, "user", None) is not None and self.user.is_authenticated:
            await self.channel_layer.group_discard(events.user_group(self.user.pk), self.channel_name)

    async def send_json(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(frame, ensure_ascii=False))

    # -- client frames -----------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        ref = None
        try:
            frame = parse_frame(text_data, bytes_data)
            ref = frame_ref(frame)
            kind, fields = validate_frame(frame)
            await getattr(self, "on_" + kind.replace(".", "_"))(ref=ref, **fields)
        except ProtocolError as error:
            await self.send_json(error_frame(error.code, error.message, ref))
        except ActionRefused as error:
            await self.send_json(error_frame(error.code, error.message, ref))
        except RoomNotFound:
            await self.send_json(error_frame("not_found", "No such room.", ref))
        except Exception:
            logger.exception("frame from user %s failed", self.user.pk)
            await self.send_json(error_frame("internal", "Something went wrong on the server.", ref))

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

    async def on_room_join(self, *, ref: str | None, roomId: str, since: dict[str, Any] | None = None) -> None:  # noqa: N803
        await self._join(roomId, since, ref)

    async def on_room_leave(self, *, ref: str | None, roomId: str) -> None:  # noqa: N803
        await database_sync_to_async(selectors.room_get_for_user)(user=self.user, room_id=roomId)
        await self._leave()
        await self.send_json(_with_ref({"type": "ack"}, ref))

    async def on_chat_send(
        self, *, ref: str | None, requestId: str, text: str, roomId: str | None = None,  # noqa: N803
        body: dict[str, Any] | None = None,
    ) -> None:
        room_id = await self._room_to_stream_in(roomId)
        start = await database_sync_to_async(services.chat_send)(
            user=self.user, room_id=room_id, request_id=requestId, text=text, body=body
        )
        assistant.start_reply(start)

    async def on_chat_regenerate(self, *, ref: str | None, requestId: str, roomId: str | None = None) -> None:  # noqa: N803
        room_id = await self._room_to_stream_in(roomId)
        start = await database_sync_to_async(services.chat_regenerate)(
            user=self.user, room_id=room_id, request_id=requestId
        )
        assistant.start_reply(start)

    async def on_chat_edit(self, *, ref: str | None, requestId: str, messageId: str, text: str) -> None:  # noqa: N803
        if self.active_room is None:
            raise ActionRefused("bad_request", "Join a room before editing its messages.")
        start = await database_sync_to_async(services.chat_edit)(
            user=self.user, room_id=self.active_room, message_id=messageId, text=text, request_id=requestId
        )
        assistant.start_reply(start)

    async def on_chat_cancel(self, *, ref: str | None, requestId: str) -> None:  # noqa: N803
        found = await database_sync_to_async(self._cancel)(requestId)
        if not found:
            raise ActionRefused("not_found", "No answer with that requestId is streaming.")
        await self.send_json(_with_ref({"type": "ack"}, ref))

    async def on_tool_result(self, *, ref: str | None, requestId: str, toolCallId: str, output: Any) -> None:  # noqa: N803
        raise ActionRefused("not_found", "No tool call with that id is waiting for a result.")

    async def on_tool_approval(self, *, ref: str | None, requestId: str, toolCallId: str, approved: bool) -> None:  # noqa: N803
        raise ActionRefused("not_found", "No tool call with that id is waiting for approval.")

    def _cancel(self, request_id: str) -> bool:
        live = selectors.live_stream_for_user_request(user=self.user, request_id=request_id)
        return live is not None and services.chat_cancel(user=self.user, room=live[0], stream_id=live[1].stream_id)

    async def _room_to_stream_in(self, room_id: str | None) -> str:
        """The room a chat frame is for. Naming a room that is not active joins it first, so that the
        sender watches the answer it asked for."""
        if room_id is None:
            if self.active_room is None:
                raise ActionRefused("bad_request", "Give `roomId` or join a room first.")
            return self.active_room
        if room_id != self.active_room:
            await self._join(room_id, None, None)
        return room_id

    # -- joining and leaving -----------------------------------------------------------------

    async def _join(self, room_id: str, since: dict[str, Any] | None, ref: str | None) -> None:
        # Subscribe first, read the database second, drop live chunks already sent third.
        await database_sync_to_async(selectors.room_get_for_user)(user=self.user, room_id=room_id)
        await self._leave()
        self.active_room = str(int(room_id))
        await self.channel_layer.group_add(events.room_group(self.active_room), self.channel_name)
        await database_sync_to_async(recovery.streams_recover_stale)(room_id=int(self.active_room))
        try:
            snapshot = await database_sync_to_async(selectors.room_snapshot_for_user)(
                user=self.user, room_id=self.active_room, since=since
            )
        except RoomNotFound:
            await self._leave()
            raise
        await self.send_json(_with_ref({"type": "messages", "roomId": snapshot.room_id,
                                        "messages": snapshot.messages}, ref))
        live = snapshot.live
        if live is None:
            return
        header = {"roomId": snapshot.room_id, "requestId": live.request_id, "streamId": live.stream_id}
        await self.send_json({"type": "stream.resuming", **header})
        first = since["index"] + 1 if since and since["streamId"] == live.stream_id else 0
        self.next_index[live.stream_id] = first
        self.stream_request[live.stream_id] = live.request_id
        await self._send_chunks(live.stream_id, snapshot.replay, replay=True)
        await self.send_json({"type": "stream.replay_complete", "roomId": snapshot.room_id,
                              "streamId": live.stream_id, "lastIndex": self.next_index[live.stream_id] - 1})

    async def _leave(self) -> None:
        if self.active_room is not None:
            await self.channel_layer.group_discard(events.room_group(self.active_room), self.channel_name)
        self.active_room = None
        self.next_index.clear()
        self.stream_request.clear()

    # -- events from the channel layer -------------------------------------------------------

    async def rooms_changed(self, event: dict[str, Any]) -> None:
        await self._send_rooms()

    async def _send_rooms(self) -> None:
        rooms = await database_sync_to_async(selectors.room_list_for_user)(user=self.user)
        await self.send_json({"type": "rooms", "rooms": rooms})

    async def room_frame(self, event: dict[str, Any]) -> None:
        if event["roomId"] != self.active_room:
            return
        frame = event["frame"]
        if frame["type"] == "stream.start":
            self.next_index[frame["streamId"]] = 0
            self.stream_request[frame["streamId"]] = frame["requestId"]
        elif frame["type"] == "stream.done":
            stream_id = frame["streamId"]
            if stream_id not in self.next_index:
                return  # joined after it ended: `messages` already held the final message
            await self._fill_gap(stream_id, frame["lastIndex"])
            del self.next_index[stream_id]
            self.stream_request.pop(stream_id, None)
        await self.send_json(frame)

    async def room_gone(self, event: dict[str, Any]) -> None:
        if event["roomId"] != self.active_room:
            return
        if event["frame"]["type"] == "room.deleted":
            await self._leave()
        else:
            self.next_index.clear()
            self.stream_request.clear()
        await self.send_json(event["frame"])

    async def stream_chunks(self, event: dict[str, Any]) -> None:
        stream_id = event["streamId"]
        if event["roomId"] != self.active_room or stream_id not in self.next_index:
            return
        chunks = event["chunks"]
        if chunks[0][0] > self.next_index[stream_id]:
            # The channel layer dropped something: take the missing chunks from the database.
            await self._fill_gap(stream_id, chunks[0][0] - 1)
        await self._send_chunks(stream_id, chunks, replay=False)

    async def _send_chunks(self, stream_id: str, chunks: list[tuple[int, str]] | list[list[Any]], *, replay: bool) -> None:
        expected = self.next_index[stream_id]
        request_id = self.stream_request[stream_id]
        for index, body in chunks:
            if index < expected:
                continue  # already sent
            if index > expected:
                break  # never skip: the caller fills gaps first
            await self.send(text_data=chunk_frame_text(
                room_id=self.active_room, request_id=request_id, stream_id=stream_id,  # type: ignore[arg-type]
                index=index, body=body, replay=replay,
            ))
            expected += 1
        self.next_index[stream_id] = expected

    async def _fill_gap(self, stream_id: str, through: int) -> None:
        """Send chunks next_index..through from the database, waiting for the recorder's flush if the
        live relay got ahead of it."""
        read = database_sync_to_async(chunks_after)
        if self.next_index[stream_id] > through:
            return
        logger.info("stream %s: filling chunks %d..%d from the database", stream_id, self.next_index[stream_id], through)
        for _attempt in range(GAP_FILL_ATTEMPTS):
            stored = await read(stream_id=stream_id, after_index=self.next_index[stream_id] - 1, up_to=through)
            await self._send_chunks(stream_id, stored, replay=False)
            if self.next_index[stream_id] > through:
                return
            await asyncio.sleep(settings.STREAM_FLUSH_MS / 1000)
        logger.error("stream %s: chunks %d..%d never reached the database", stream_id,
                     self.next_index[stream_id], through)
        await self.send_json(error_frame("internal", "Part of this answer was lost; reload the room.",
                                         roomId=self.active_room, streamId=stream_id))
        self.next_index[stream_id] = through + 1


def _with_ref(frame: dict[str, Any], ref: str | None) -> dict[str, Any]:
    if ref is not None:
        frame["ref"] = ref
    return frame
