"""Streams whose worker is gone: finished as interrupted exactly once, by a join, the sweep or the command."""
from __future__ import annotations

import json
import threading
from datetime import timedelta
from io import StringIO

import pytest
from channels.db import database_sync_to_async
from django.core.management import call_command
from django.db import close_old_connections
from django.utils import timezone

from chatrooms import services
from chatrooms.models import Message, PendingToolCall
from chatrooms.recovery import orphan_seconds, stream_interrupt_if_orphaned, streams_recover_stale
from streaming.models import Stream, StreamChunk
from tests.factories import make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)

CHUNKS = [
    {"type": "start", "messageId": "x"}, {"type": "start-step"},
    {"type": "text-start", "id": "t1"}, {"type": "text-delta", "id": "t1", "delta": "Half an "},
    {"type": "text-delta", "id": "t1", "delta": "answer"},
]


def orphaned_stream(*, age_seconds: float = 120, username: str = "alice") -> tuple[Stream, Message]:
    """A stream as a killed worker leaves it: live, chunks stored, heartbeat old."""
    user = make_user(username)
    room = make_room(user)
    start = services.chat_send(user=user, room_id=room.pk, request_id="r", text="hi")
    StreamChunk.objects.bulk_create(
        StreamChunk(stream_id=start.stream_id, index=i, body=json.dumps(c)) for i, c in enumerate(CHUNKS)
    )
    Stream.objects.filter(pk=start.stream_id).update(heartbeat_at=timezone.now() - timedelta(seconds=age_seconds))
    return Stream.objects.get(pk=start.stream_id), Message.objects.get(pk=start.message_id)


def test_a_stale_stream_becomes_an_interrupted_message_from_its_stored_chunks():
    stream, placeholder = orphaned_stream()
    assert streams_recover_stale() == 1
    message = Message.objects.get(pk=placeholder.pk)
    assert (message.status, message.content) == ("interrupted", "Half an answer")
    assert message.parts == [{"type": "step-start"}, {"type": "text", "text": "Half an answer"}]
    assert Stream.objects.get(pk=stream.pk).status == "interrupted"
    assert streams_recover_stale() == 0, "finished once only"


def test_a_stale_streams_calls_that_wait_for_a_person_end_with_it():
    _stale, placeholder = orphaned_stream()
    _live, live_placeholder = orphaned_stream(age_seconds=1, username="bob")  # its call still waits
    for message, call_id, state in ((placeholder, "call-1", "waiting"), (placeholder, "call-2", "answered"),
                                    (live_placeholder, "call-3", "waiting")):
        PendingToolCall.objects.create(room_id=message.room_id, stream_id=message.stream_id, tool_call_id=call_id,
                                       tool_name="get_local_time", kind="client", state=state)
    assert streams_recover_stale() == 1
    assert dict(PendingToolCall.objects.values_list("tool_call_id", "state")) == {
        "call-1": "expired", "call-2": "answered", "call-3": "waiting"}


def test_a_live_stream_with_a_recent_heartbeat_is_left_alone():
    stream, _ = orphaned_stream(age_seconds=1)
    assert streams_recover_stale() == 0
    assert Stream.objects.get(pk=stream.pk).status == "streaming"


def test_two_workers_racing_finish_it_exactly_once():
    orphaned_stream()
    results: list[int] = []
    barrier = threading.Barrier(2)

    def sweep() -> None:
        barrier.wait()
        try:
            results.append(streams_recover_stale())
        finally:
            close_old_connections()

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0, 1]
    assert Message.objects.filter(status="interrupted").count() == 1


async def test_joining_the_room_of_a_stale_stream_finishes_it(connect):
    stream, placeholder = await database_sync_to_async(orphaned_stream)()
    user = await database_sync_to_async(lambda: placeholder.room.owner)()
    client = await connect(user)
    await client.send({"type": "room.join", "roomId": str(placeholder.room_id)})
    frames = await client.receive_until("messages")
    assert [(m["role"], m["status"], m["content"]) for m in frames[-1]["messages"]] == [
        ("user", "complete", "hi"), ("assistant", "interrupted", "Half an answer")]


def test_recover_streams_command_reports_counts_and_honours_dry_run():
    orphaned_stream(age_seconds=10)
    out = StringIO()
    call_command("recover_streams", "--dry-run", stdout=out)
    assert out.getvalue().strip() == "0 stale stream(s) would be finished as interrupted"
    out = StringIO()
    call_command("recover_streams", "--stale-after", "5", "--dry-run", stdout=out)
    assert out.getvalue().strip() == "1 stale stream(s) would be finished as interrupted"
    assert Stream.objects.filter(status="streaming").count() == 1
    out = StringIO()
    call_command("recover_streams", "--stale-after", "5", stdout=out)
    assert out.getvalue().strip() == "1 stale stream(s) finished as interrupted"
    assert Message.objects.filter(status="interrupted").count() == 1


def test_cleanup_streams_deletes_only_old_finished_chunks():
    stream, _ = orphaned_stream()
    streams_recover_stale()
    live, _ = orphaned_stream(age_seconds=0, username="bob")
    Stream.objects.filter(pk=stream.pk).update(finished_at=timezone.now() - timedelta(hours=30))
    out = StringIO()
    call_command("cleanup_streams", "--dry-run", stdout=out)
    assert out.getvalue().startswith(f"{len(CHUNKS)} chunk(s) ") and "would be deleted" in out.getvalue()
    assert StreamChunk.objects.count() == 2 * len(CHUNKS)
    call_command("cleanup_streams", "--batch-size", "2", stdout=StringIO())
    assert list(StreamChunk.objects.values_list("stream_id", flat=True).distinct()) == [live.pk]


def test_a_cancelled_stream_is_finished_at_once_only_if_its_worker_missed_two_heartbeats(settings):
    settings.STREAM_HEARTBEAT_SECONDS, settings.STREAM_STALE_SECONDS = 5, 30
    assert orphan_seconds() == 11
    _beating, beating = orphaned_stream(age_seconds=4)
    assert stream_interrupt_if_orphaned(stream_id=str(beating.stream_id)) is None
    assert Message.objects.get(pk=beating.pk).status == "streaming"
    _gone, gone = orphaned_stream(age_seconds=12, username="bob")  # not yet stale (30 s), but two beats missed
    finished = stream_interrupt_if_orphaned(stream_id=str(gone.stream_id))
    assert (finished.status, finished.content) == ("interrupted", "Half an answer")
    assert stream_interrupt_if_orphaned(stream_id=str(gone.stream_id)) is None  # once only
    settings.STREAM_HEARTBEAT_SECONDS = 60
    assert orphan_seconds() == 30  # never later than the sweep


async def owner_in_the_room_of_an_orphaned_stream(connect, *, age_seconds: float):  # noqa: ANN001, ANN201
    """A socket of the room's owner, joined to the room of a stream whose heartbeat is this old."""
    _stream, placeholder = await database_sync_to_async(orphaned_stream)(age_seconds=age_seconds)
    user = await database_sync_to_async(lambda: placeholder.room.owner)()
    client = await connect(user)
    await client.send({"type": "room.join", "roomId": str(placeholder.room_id)})
    await client.receive_until("messages")
    return client, placeholder


async def test_cancelling_an_answer_whose_worker_is_gone_ends_it_at_once(connect, settings):
    settings.STREAM_HEARTBEAT_SECONDS, settings.STREAM_STALE_SECONDS = 5, 30
    client, placeholder = await owner_in_the_room_of_an_orphaned_stream(connect, age_seconds=12)
    # The join's sweep leaves it: not yet STREAM_STALE_SECONDS old.
    assert await database_sync_to_async(lambda: Message.objects.get(pk=placeholder.pk).status)() == "streaming"
    await client.send({"type": "chat.cancel", "requestId": "r", "ref": "c1"})
    done = (await client.receive_until("stream.done", timeout=5))[-1]
    assert done["status"] == "interrupted" and done["message"]["content"] == "Half an answer"


async def test_cancelling_an_answer_whose_worker_just_died_ends_it_after_two_heartbeats(connect, settings):
    settings.STREAM_HEARTBEAT_SECONDS, settings.STREAM_STALE_SECONDS = 1, 30
    client, placeholder = await owner_in_the_room_of_an_orphaned_stream(connect, age_seconds=0)
    await client.send({"type": "chat.cancel", "requestId": "r", "ref": "c1"})
    await client.receive_until("ack", ref="c1")
    assert await database_sync_to_async(lambda: Message.objects.get(pk=placeholder.pk).status)() == "streaming"
    done = (await client.receive_until("stream.done", timeout=10))[-1]  # orphan_seconds() == 3
    assert done["status"] == "interrupted" and done["message"]["content"] == "Half an answer"
