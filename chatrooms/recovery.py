"""Finishing answers whose worker is gone: stale streams become `interrupted` messages, exactly once."""
from __future__ import annotations

import asyncio
import json
import logging

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError, transaction

from streaming.lifecycle import stale_cutoff, stream_finish, streams_stale
from streaming.models import Stream
from streaming.replay import chunks_after
from streaming.safe_json import safe_text, storable
from streaming.ui_message import UIMessageBuilder

from . import events
from .models import ROOM_STREAM_KEY_PREFIX, Message
from .shapes import message_to_dict
from .selectors import room_viewer_ids
from .services import tool_waits_end

logger = logging.getLogger(__name__)


def stream_interrupt(*, stream: Stream, stale_seconds: float | None = None) -> Message | None:
    """Turn a stale stream's stored chunks into its message with status `interrupted` and tell the
    room. None when someone else finished it first, or its worker beat again in the meantime."""
    with transaction.atomic():
        cutoff = stale_cutoff(stale_seconds)
        if not stream_finish(stream_id=stream.pk, status=Stream.Status.INTERRUPTED, if_stale_before=cutoff):
            return None
        tool_waits_end(stream_id=stream.pk)
        message = Message.objects.select_related("room").filter(stream=stream, status=Message.Status.STREAMING).first()
        if message is None:
            return None
        builder = UIMessageBuilder()
        stored = chunks_after(stream_id=stream.pk, after_index=-1)
        for _index, body in stored:
            builder.apply(json.loads(body))
        message.status = Message.Status.INTERRUPTED
        # Chunks stored before their values were made safe may hold what the message cannot.
        message.content = safe_text(builder.text)
        message.parts = storable(builder.final_parts())
        message.save(update_fields=["status", "content", "parts", "updated_at"])
        room = message.room
        events.room_frame_after_commit(room.pk, {
            "type": "stream.done",
            "roomId": str(room.pk),
            "requestId": stream.request_id,
            "streamId": str(stream.pk),
            "status": Message.Status.INTERRUPTED,
            "message": message_to_dict(message),
            "lastIndex": stored[-1][0] if stored else -1,
        })
        events.rooms_changed_after_commit(room_viewer_ids(room=room))
    logger.warning("stream %s had no heartbeat; finished it as interrupted", stream.pk)
    return message


def streams_recover_stale(*, room_id: int | None = None, stale_seconds: float | None = None) -> int:
    """Finish every stale room stream (or one room's); returns how many this call finished."""
    if room_id is not None:
        stale = streams_stale(stale_seconds=stale_seconds, key=f"{ROOM_STREAM_KEY_PREFIX}{room_id}")
    else:
        stale = streams_stale(stale_seconds=stale_seconds, key_prefix=ROOM_STREAM_KEY_PREFIX)
    finished = 0
    for stream in stale:
        try:
            finished += stream_interrupt(stream=stream, stale_seconds=stale_seconds) is not None
        except DatabaseError:  # one stream the database refuses must not keep the others live
            logger.exception("stream %s could not be finished as interrupted; trying again later", stream.pk)
    return finished


def orphan_seconds() -> float:
    """How old the heartbeat of a stream someone cancelled must be for its worker to count as gone: two
    missed beats (STREAM_HEARTBEAT_SECONDS), and never more than STREAM_STALE_SECONDS."""
    return min(settings.STREAM_STALE_SECONDS, 2 * settings.STREAM_HEARTBEAT_SECONDS + 1)


def stream_interrupt_if_orphaned(*, stream_id: str) -> Message | None:
    """Finish a cancelled stream now, as `interrupted` from its stored chunks, if its worker missed two
    heartbeats: a live worker would have ended it on the cancel; a dead one never will, and the room
    would stay busy until the stale sweep. None if it is not orphaned (or already finished)."""
    stream = Stream.objects.filter(pk=stream_id, status=Stream.Status.STREAMING).first()
    return None if stream is None else stream_interrupt(stream=stream, stale_seconds=orphan_seconds())


# One check per cancelled stream and process, however many cancels arrive for it.
_after_cancel: dict[str, asyncio.Task[None]] = {}


def finish_cancelled_if_orphaned(stream_id: str) -> None:
    """After a cancel: end the stream at once if its worker is gone, else look again once two heartbeats
    have passed (a live worker, which goes on beating while it stops, has ended it by then or is still
    beating; a killed one has not beaten)."""
    stream_id = str(stream_id)
    if stream_id in _after_cancel:
        return
    async def finish() -> None:
        interrupt = database_sync_to_async(stream_interrupt_if_orphaned, thread_sensitive=False)
        try:
            if await interrupt(stream_id=stream_id) is None:
                await asyncio.sleep(orphan_seconds())
                await interrupt(stream_id=stream_id)
        except DatabaseError:  # the stale sweep finishes it later anyway
            logger.warning("cancelled stream %s could not be checked for a lost worker", stream_id, exc_info=True)

    task = asyncio.get_running_loop().create_task(finish(), name=f"cancelled-stream-{stream_id}")
    _after_cancel[stream_id] = task
    task.add_done_callback(lambda _task: _after_cancel.pop(stream_id, None))


_sweeper: asyncio.Task[None] | None = None


def ensure_sweeper() -> None:
    """Start this worker's periodic sweep for stale streams, once per process."""
    global _sweeper
    loop = asyncio.get_running_loop()
    if _sweeper is None or _sweeper.done() or _sweeper.get_loop() is not loop:
        _sweeper = loop.create_task(_sweep_forever(), name="stale-stream-sweeper")


async def _sweep_forever() -> None:
    recover = database_sync_to_async(streams_recover_stale, thread_sensitive=False)
    while True:
        await asyncio.sleep(max(1, settings.STREAM_STALE_SECONDS / 2))
        try:
            await recover()
        except Exception:
            logger.exception("sweeping stale streams failed; trying again later")
