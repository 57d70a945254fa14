"""The maintenance commands: prune_messages, export_room, chat_stats, and the argument checks of
cleanup_streams and recover_streams. Each prints counts, changes nothing in a dry run, and exits
with CommandError on bad arguments."""
from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chatrooms import events, services
from chatrooms.models import Message, Room
from streaming.models import Stream
from tests.factories import add_member, make_room, make_user

pytestmark = pytest.mark.django_db


def run(*args: Any) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def say(room: Room, author: Any, text: str, *, days_ago: float = 0) -> Message:
    message = Message.objects.create(room=room, role=Message.Role.USER, author=author, content=text,
                                     parts=[{"type": "text", "text": text}])
    if days_ago:
        Message.objects.filter(pk=message.pk).update(created_at=timezone.now() - timedelta(days=days_ago))
    return message


def answer(room: Room, text: str, *, usage: dict[str, Any] | None = None, status: str = "complete") -> Message:
    parts: list[dict[str, Any]] = [{"type": "step-start"}, {"type": "text", "text": text}]
    if usage is not None:
        parts.append({"type": "data-usage", "id": "usage", "data": usage})
    return Message.objects.create(room=room, role=Message.Role.ASSISTANT, content=text, parts=parts, status=status)


def ids_of(room: Room) -> list[int]:
    return list(Message.objects.filter(room=room).order_by("id").values_list("id", flat=True))


@pytest.fixture
def broadcasts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(events, "_send_now", lambda group, event: sent.append((group, event)))
    return sent


def removed_frames(sent: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    return [(event["roomId"], event["frame"]["messageId"]) for _group, event in sent
            if event["type"] == "room.frame" and event["frame"]["type"] == "message.removed"]


# -- every command has help ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prune_messages", "export_room", "chat_stats", "cleanup_streams", "recover_streams"])
def test_every_command_explains_itself(name: str):
    command = load_command_class("chatrooms" if name != "cleanup_streams" else "streaming", name)
    text = command.create_parser("manage.py", name).format_help()
    assert len(command.help) > 60 and command.help.split()[0] in text
    for option in {"prune_messages": ["--older-than", "--keep", "--dry-run"], "export_room": ["--format", "--output"],
                   "chat_stats": ["--json"], "cleanup_streams": ["--dry-run", "--batch-size"],
                   "recover_streams": ["--dry-run", "--stale-after"]}[name]:
        assert option in text


# -- prune_messages ------------------------------------------------------------------------------


@pytest.fixture
def two_rooms():
    alice, bob = make_user("alice"), make_user("bob")
    busy, quiet = make_room(alice, "Busy"), make_room(bob, "Quiet")
    add_member(busy, bob)
    for i in range(3):
        say(busy, alice, f"old {i}", days_ago=40)
        answer(busy, f"old answer {i}")
        Message.objects.filter(room=busy, content=f"old answer {i}").update(created_at=timezone.now() - timedelta(days=40))
    say(busy, alice, "new")
    answer(busy, "new answer")
    say(quiet, bob, "only one", days_ago=40)
    return alice, bob, busy, quiet


def test_prune_dry_run_counts_and_changes_nothing(two_rooms, broadcasts, django_capture_on_commit_callbacks):
    _alice, _bob, busy, quiet = two_rooms
    before = list(Message.objects.order_by("id").values_list("id", "content"))
    with django_capture_on_commit_callbacks(execute=True):
        out = run("prune_messages", "--older-than", "30", "--dry-run")
    assert out.strip().startswith("7 message(s) in 2 room(s) would be deleted (dry run: nothing was)")
    with django_capture_on_commit_callbacks(execute=True):
        out = run("prune_messages", "--keep", "2", "--dry-run")
    assert out.startswith("6 message(s) in 1 room(s) would be deleted")
    assert list(Message.objects.order_by("id").values_list("id", "content")) == before
    assert broadcasts == []


def test_prune_by_age_removes_old_messages_everywhere_and_tells_viewers(
    two_rooms, broadcasts, django_capture_on_commit_callbacks
):
    alice, bob, busy, quiet = two_rooms
    old_busy = ids_of(busy)[:6]
    old_quiet = ids_of(quiet)
    with django_capture_on_commit_callbacks(execute=True):
        out = run("prune_messages", "--older-than", "30")
    assert out.startswith("7 message(s) in 2 room(s) deleted: created before ")
    assert [m.content for m in Message.objects.filter(room=busy)] == ["new", "new answer"]
    assert not Message.objects.filter(room=quiet).exists()
    assert removed_frames(broadcasts) == [(str(busy.pk), str(pk)) for pk in old_busy] + [
        (str(quiet.pk), str(pk)) for pk in old_quiet]
    rooms_changed = sorted(group for group, event in broadcasts if event["type"] == "rooms.changed")
    assert rooms_changed == sorted([events.user_group(alice.pk), events.user_group(bob.pk), events.user_group(bob.pk)])


def test_prune_keep_is_per_room_and_never_touches_a_live_answer(two_rooms, broadcasts, django_capture_on_commit_callbacks):
    alice, _bob, busy, quiet = two_rooms
    live = services.chat_send(user=alice, room_id=busy.pk, request_id="live", text="still going")
    ids = ids_of(busy)
    assert ids[-1] == live.message_id
    with django_capture_on_commit_callbacks(execute=True):
        out = run("prune_messages", "--keep", "2")
    # The two newest finished messages stay (the user message that started the answer is one); the
    # placeholder is not counted, and stays.
    assert out.startswith("7 message(s) in 1 room(s) deleted: beyond the newest 2 of their room")
    assert ids_of(busy) == ids[-3:]
    assert Message.objects.get(pk=live.message_id).status == Message.Status.STREAMING
    assert len(ids_of(quiet)) == 1
    with django_capture_on_commit_callbacks(execute=True):
        out = run("prune_messages", "--keep", "0", "--room", str(busy.pk))
    assert out.startswith("2 message(s) in 1 room(s) deleted")
    assert ids_of(busy) == [live.message_id] and len(ids_of(quiet)) == 1


def test_prune_with_both_rules_deletes_only_what_is_old_and_beyond_keep(two_rooms, django_capture_on_commit_callbacks):
    _alice, _bob, busy, quiet = two_rooms
    ids = ids_of(busy)  # six old ones, then two new
    with django_capture_on_commit_callbacks(execute=True):
        out = run("prune_messages", "--older-than", "30", "--keep", "4")
    assert out.startswith("4 message(s) in 1 room(s) deleted: created before ") and "beyond the newest 4" in out
    assert ids_of(busy) == ids[4:]
    assert len(ids_of(quiet)) == 1  # old, but the newest of its room


def test_prune_is_bulk_not_a_query_per_message(django_capture_on_commit_callbacks):
    alice = make_user("alice")

    def queries_to_prune(count: int) -> int:
        room = make_room(alice, f"Room of {count}")
        Message.objects.bulk_create([Message(room=room, role=Message.Role.USER, author=alice, content=str(i))
                                     for i in range(count)])
        with CaptureQueriesContext(connection) as queries, django_capture_on_commit_callbacks(execute=False):
            call_command("prune_messages", "--keep", "0", "--room", str(room.pk), stdout=StringIO())
        assert not Message.objects.filter(room=room).exists()
        return len(queries)

    few, many = queries_to_prune(5), queries_to_prune(400)
    # Django deletes rows 100 to a statement: a few statements more, not 395 queries more.
    assert many - few <= 400 // 100 and many < 20


@pytest.mark.parametrize("args, complaint", [
    ([], "--older-than DAYS, --keep N or both"),
    (["--older-than", "-1"], "--older-than must be 0 or more"),
    (["--keep", "-3"], "--keep must be 0 or more"),
    (["--keep", "many"], "invalid int value"),
    (["--older-than", "soon"], "invalid float value"),
    (["--keep", "1", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--keep", "1", "--room", "987654"], "No room has the id 987654"),
    (["--keep", "1", "--unknown"], "unrecognized arguments"),
])
def test_prune_refuses_bad_arguments_and_changes_nothing(two_rooms, args, complaint):
    before = Message.objects.count()
    with pytest.raises(CommandError, match=complaint.replace("-", r"\-").replace(".", r"\.")):
        run("prune_messages", *args)
    assert Message.objects.count() == before


# -- export_room ---------------------------------------------------------------------------------


@pytest.fixture
def exported_room():
    alice = make_user("alice")
    room = make_room(alice, "Trip <plans>")
    say(room, alice, "Where to?")
    answer(room, "**Lisbon**, maybe.")
    services.chat_send(user=alice, room_id=room.pk, request_id="live", text="And when?")  # a live answer: left out
    return room


def test_export_room_as_json_to_stdout_is_the_import_document(exported_room):
    document = json.loads(run("export_room", str(exported_room.pk), "--format", "json"))
    assert document["format"] == "chatrooms.room-export" and document["room"]["name"] == "Trip <plans>"
    assert [(m["role"], m["content"]) for m in document["messages"]] == [
        ("user", "Where to?"), ("assistant", "**Lisbon**, maybe."), ("user", "And when?")]


def test_export_room_as_markdown_to_a_file(exported_room, tmp_path):
    target = tmp_path / "trip.md"
    out = run("export_room", str(exported_room.pk), "--format", "md", "--output", str(target))
    assert out.strip() == f"Room {exported_room.pk} (3 message(s)) written to {target} as md"
    text = target.read_text()
    assert text.startswith("# Trip <plans>") and "**Lisbon**, maybe." in text and "Where to?" in text


@pytest.mark.parametrize("args, complaint", [
    (["987654"], "No room has the id 987654"),
    (["abc"], "invalid int value"),
    ([], "the following arguments are required: ROOM_ID"),
    (["{room}", "--format", "pdf"], "invalid choice: 'pdf'"),
    (["{room}", "--output", "/nonexistent-dir/x/trip.md"], "Cannot write /nonexistent-dir/x/trip.md"),
])
def test_export_room_refuses_bad_arguments(exported_room, args, complaint):
    args = [arg.format(room=exported_room.pk) for arg in args]
    with pytest.raises(CommandError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        run("export_room", *args)


# -- chat_stats ----------------------------------------------------------------------------------


def test_chat_stats_counts_everything_and_sums_reported_tokens(django_capture_on_commit_callbacks):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    room, other = make_room(alice, "One"), make_room(bob, "Two")
    say(room, alice, "hi")
    answer(room, "hello", usage={"model": "openai/a", "inputTokens": 10, "outputTokens": 5, "totalTokens": 15})
    say(other, bob, "old question", days_ago=3)
    answer(other, "old answer", usage={"model": "openai/b", "inputTokens": 100, "outputTokens": 20,
                                       "totalTokens": 120}, status="aborted")
    say(other, carol, "long ago", days_ago=30)
    answer(other, "no usage reported")
    answer(other, "bad usage", usage={"model": "openai/a", "inputTokens": "many"})
    services.chat_send(user=alice, room_id=room.pk, request_id="live", text="more")  # a live stream

    out = run("chat_stats")
    assert "Rooms: 2" in out and "Messages: 9" in out
    assert "  user: 4 (complete 4)" in out
    assert "  assistant: 5 (aborted 1, complete 3, streaming 1)" in out
    assert "Streams: 1" in out and "  streaming: 1" in out
    assert "Tokens: 135 (110 in, 25 out) over 2 answer(s)" in out
    assert "  openai/a: 15 (10 in, 5 out) over 1 answer(s)" in out
    assert "Active users: 1 in the last 24 hours, 2 in the last 7 days" in out

    stats = json.loads(run("chat_stats", "--json"))
    assert stats["rooms"] == 2
    assert stats["messages"] == {"user": {"complete": 4}, "assistant": {"complete": 3, "aborted": 1, "streaming": 1}}
    assert stats["streams"] == {"streaming": 1}
    assert stats["usage"] == {"answers": 2, "input_tokens": 110, "output_tokens": 25, "total_tokens": 135}
    assert stats["usage_by_model"]["openai/b"]["total_tokens"] == 120
    assert stats["active_users"] == {"day": 1, "week": 2}


def test_chat_stats_of_an_empty_server():
    stats = json.loads(run("chat_stats", "--json"))
    assert stats == {"rooms": 0, "messages": {}, "streams": {}, "usage_by_model": {},
                     "usage": {"answers": 0, "input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
                     "active_users": {"day": 0, "week": 0}}
    assert "Tokens: 0 (0 in, 0 out) over 0 answer(s)" in run("chat_stats")


def test_chat_stats_refuses_unknown_arguments():
    with pytest.raises(CommandError, match="unrecognized arguments"):
        run("chat_stats", "--yaml")


# -- cleanup_streams and recover_streams ---------------------------------------------------------


@pytest.mark.parametrize("args, complaint", [
    (["cleanup_streams", "--older-than-hours", "-1"], "--older-than-hours must be 0 or more"),
    (["cleanup_streams", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["cleanup_streams", "--batch-size", "lots"], "invalid int value"),
    (["recover_streams", "--stale-after", "-5"], "--stale-after must be 0 or more"),
    (["recover_streams", "--stale-after", "later"], "invalid float value"),
])
def test_stream_commands_refuse_bad_arguments_with_command_error(args, complaint):
    user = make_user()
    live = services.chat_send(user=user, room_id=make_room(user).pk, request_id="r", text="go")
    with pytest.raises(CommandError, match=complaint.replace("-", r"\-")):
        run(*args)
    assert Stream.objects.get(pk=live.stream_id).status == "streaming"
