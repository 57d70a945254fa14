"""Property (issue 14): hostile JSON values (NaN, infinities, integers past 64 bits, lone surrogates,
U+0000, deep nesting) from every outside source: the model's text and tool-call arguments (from the
test model server, over HTTP), a server tool's and an MCP server's output, a client tool's result and
an approval (as raw frames), an imported file. Whatever comes, nothing answers 500 or `internal`,
every frame sent can be encoded, the answer ends and is stored, the room takes the next question,
no socket count leaks, and nothing already stored is lost."""
from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from chatrooms import services
from chatrooms.models import Message, Room
from chatrooms.scripted_model_server import ScriptedReply
from streaming.models import StreamChunk
from streaming.safe_json import storable
from tests.chatrooms.test_tools import extra_tools, mcp_settings  # noqa: F401  (fixtures)
from tests.factories import make_room, make_user
from tests.hostile import HOSTILE_TEXT, HOSTILE_VALUES, encodable, hostile_json_text

pytestmark = pytest.mark.django_db(transaction=True)

USERNAMES = itertools.count()
PROPERTY = hypothesis_settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
OUTPUT: dict[str, Any] = {}  # what the `hostile_output` tool returns in the current example


@pytest.fixture
def hostile_tool(extra_tools, settings):  # noqa: F811
    @extra_tools.tool("Return the example's value.")
    def hostile_output() -> Any:
        return OUTPUT["value"]

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.SOCKETS_PER_USER = 2
    return extra_tools


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values, numbers compared as doubles: PostgreSQL's jsonb keeps 1e308 as its exact
    decimal, which reads back as an int."""
    def as_doubles(value: Any) -> Any:
        return json.loads(json.dumps(value), parse_int=float)
    return as_doubles(a) == as_doubles(b)


def truncated(output: Any) -> bool:
    return isinstance(output, dict) and bool(output.get("truncated"))


def chunks_of(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f["chunk"] for f in frames if f["type"] == "stream.chunk" and f["chunk"]["type"] == kind]


async def new_user_in_a_room(connect: Any) -> tuple[Any, Any, str, int]:
    """A fresh user with one earlier exchange stored (what must not be lost), joined to the room."""
    def make() -> tuple[Any, Room, int]:
        user = make_user(f"hostile{next(USERNAMES)}")
        room = make_room(user, "Hostile")
        Message.objects.create(room=room, role="user", author=user, content="earlier",
                               parts=[{"type": "text", "text": "earlier"}])
        return user, room, Message.objects.filter(room=room).count()

    user, room, stored = await database_sync_to_async(make)()
    client = await connect(user)
    await client.send({"type": "room.join", "roomId": str(room.pk)})
    await client.receive_until("messages")
    return user, client, str(room.pk), stored


async def receive_checked(client: Any, frame_type: str, **match: Any) -> list[dict[str, Any]]:
    frames = await client.receive_until(frame_type, timeout=20, **match)
    for frame in frames:
        assert encodable(frame), frame
        assert not (frame["type"] == "error" and frame["code"] == "internal"), frame
    return frames


async def answer_to(client: Any, ref: str) -> dict[str, Any]:
    """The `ack` or `error` that answers the frame with this ref, or the `error` without a ref that
    answers a frame too broken to read one from (checked like every other frame)."""
    while True:
        frame = await client.receive(timeout=20)
        assert encodable(frame), frame
        assert not (frame["type"] == "error" and frame["code"] == "internal"), frame
        if frame.get("ref") == ref or (frame["type"] == "error" and "ref" not in frame and "roomId" not in frame):
            return frame


async def chunk_of_kind(client: Any, kind: str) -> dict[str, Any]:
    while True:
        frame = await client.receive(timeout=20)
        assert encodable(frame), frame
        if frame["type"] == "stream.chunk" and frame["chunk"]["type"] == kind:
            return frame["chunk"]


async def the_room_is_sound(connect: Any, scripted_model: Any, user: Any, client: Any, room_id: str,
                            earlier: int) -> None:
    """The answer's chunks run without a gap, the room takes the next question, the earlier messages
    are all still there, the API reads the room, and the user's sockets were all given back."""
    def stored_state() -> tuple[int, list[list[int]]]:
        messages = Message.objects.filter(room_id=room_id)
        streams = [list(StreamChunk.objects.filter(stream_id=m.stream_id).order_by("index")
                        .values_list("index", flat=True)) for m in messages if m.stream_id]
        return messages.count(), streams

    scripted_model.enqueue(ScriptedReply(tokens=["Next."]))
    await client.send({"type": "chat.send", "requestId": "next", "text": "and now?"})
    done = (await receive_checked(client, "stream.done", requestId="next"))[-1]
    assert done["status"] == "complete" and done["message"]["content"] == "Next."
    count, streams = await database_sync_to_async(stored_state)()
    assert count >= earlier + 2
    for indexes in streams:
        assert indexes == list(range(len(indexes)))

    def api_reads() -> None:
        _token, key = services.api_token_create(user=user, name=f"t{next(USERNAMES)}")
        for path in (f"/api/rooms/{room_id}/", f"/api/rooms/{room_id}/messages/", f"/rooms/{room_id}/",
                     f"/rooms/{room_id}/export.md", f"/rooms/{room_id}/export.json"):
            browser = Client()
            browser.force_login(user)
            response = browser.get(path, HTTP_AUTHORIZATION=f"Bearer {key}")
            assert response.status_code == 200, (path, response.status_code)

    await database_sync_to_async(api_reads)()
    await client.close()
    for _ in range(2):  # SOCKETS_PER_USER: a leaked count would refuse one
        assert (await connect(user)).connected


# -- the model's text and tool-call arguments, a server tool's output ---------------------------

async def model_and_tool_scenario(connect_factory: Any, scripted_model: Any, tokens: list[str],
                                  arguments: Any, output: Any, mcp: bool) -> None:
    connect, close_all = connect_factory()
    scripted_model.reset()  # an example that failed may have left replies queued
    try:
        user, client, room_id, earlier = await new_user_in_a_room(connect)
        OUTPUT["value"] = output
        calls = [("hostile_output", "{}"), ("roll_dice", hostile_json_text(arguments))]
        if mcp:  # the MCP server reads the JSON text leniently and returns what it made of it
            calls.append(("calc__echo_json", json.dumps({"text": hostile_json_text(output)})))
        scripted_model.enqueue(ScriptedReply(tokens=tokens, tool_calls=calls), ScriptedReply(tokens=["Done."]))
        await client.send({"type": "chat.send", "requestId": "q", "text": "go"})
        frames = await receive_checked(client, "stream.done", requestId="q")
        done = frames[-1]
        assert done["status"] == "complete", (chunks_of(frames, "error"), [f for f in frames if f["type"] == "error"])
        stored = await database_sync_to_async(Message.objects.get)(pk=done["message"]["id"])
        assert stored.status == "complete" and same_json(stored.parts, done["message"]["parts"])
        [tool] = [p for p in stored.parts if p["type"] == "tool-hostile_output"]
        assert same_json(tool["output"], storable(output)) or truncated(tool["output"])
        await the_room_is_sound(connect, scripted_model, user, client, room_id, earlier)
    finally:
        await close_all()


@PROPERTY
@given(tokens=st.lists(HOSTILE_TEXT, max_size=3), arguments=HOSTILE_VALUES, output=HOSTILE_VALUES)
def test_hostile_model_output_and_tool_output_never_lock_a_room(
        scripted_model, connect_factory, hostile_tool, tokens, arguments, output):
    async_to_sync(model_and_tool_scenario)(connect_factory, scripted_model, tokens, arguments, output, False)


@hypothesis_settings(PROPERTY, max_examples=8)
@given(output=HOSTILE_VALUES)
def test_hostile_mcp_output_never_locks_a_room(scripted_model, connect_factory, hostile_tool, mcp_settings, output):  # noqa: F811
    async_to_sync(model_and_tool_scenario)(connect_factory, scripted_model, [], {}, output, True)


# -- a client tool's result and an approval, as raw frames -------------------------------------

async def client_answers_scenario(connect_factory: Any, scripted_model: Any, result: Any, approved: Any) -> None:
    connect, close_all = connect_factory()
    scripted_model.reset()
    try:
        user, client, room_id, earlier = await new_user_in_a_room(connect)
        scripted_model.enqueue(ScriptedReply(tool_calls=[("get_local_time", "{}")]),
                               ScriptedReply(tool_calls=[("rename_room", '{"name": "Renamed"}')]),
                               ScriptedReply(tokens=["Done."]))
        await client.send({"type": "chat.send", "requestId": "q", "text": "go"})
        call_id = (await chunk_of_kind(client, "tool-input-available"))["toolCallId"]
        raw = '{"type": "tool.result", "requestId": "q", "toolCallId": %s, "output": %s, "ref": "r"}' % (
            json.dumps(call_id), hostile_json_text(result))
        await client.communicator.send_input({"type": "websocket.receive", "text": raw})
        answer = await answer_to(client, "r")
        expected = storable(result)
        if answer["type"] == "error":  # refused: nothing was taken, and a proper answer still is
            assert answer["code"] == "bad_request", answer
            sent = {"value": expected}  # (an output of null is no output)
            expected = storable(sent)
            await client.send({"type": "tool.result", "requestId": "q", "toolCallId": call_id,
                               "output": sent, "ref": "r2"})
            assert (await answer_to(client, "r2"))["type"] == "ack"
        request = await chunk_of_kind(client, "tool-approval-request")
        raw = '{"type": "tool.approval", "requestId": "q", "toolCallId": %s, "approved": %s, "ref": "a"}' % (
            json.dumps(request["toolCallId"]), hostile_json_text(approved))
        await client.communicator.send_input({"type": "websocket.receive", "text": raw})
        answer = await answer_to(client, "a")
        assert answer["type"] == ("ack" if isinstance(approved, bool) else "error"), answer
        if answer["type"] == "error":
            assert answer["code"] == "bad_request", answer
            await client.send({"type": "tool.approval", "requestId": "q", "toolCallId": request["toolCallId"],
                               "approved": False})
        done = (await receive_checked(client, "stream.done", requestId="q"))[-1]
        assert done["status"] == "complete", done
        [local_time] = [p for p in done["message"]["parts"] if p["type"] == "tool-get_local_time"]
        assert same_json(local_time["output"], expected) or truncated(local_time["output"])
        await the_room_is_sound(connect, scripted_model, user, client, room_id, earlier)
    finally:
        await close_all()


@PROPERTY
@given(result=HOSTILE_VALUES, approved=st.one_of(st.booleans(), HOSTILE_VALUES))
def test_hostile_client_results_and_approvals_are_refused_or_stored_safely(
        scripted_model, connect_factory, hostile_tool, result, approved):
    async_to_sync(client_answers_scenario)(connect_factory, scripted_model, result, approved)


# -- imports -----------------------------------------------------------------------------------

def export_document(content: Any, part: Any, extra: Any) -> str:
    return ('{"format": "chatrooms.room-export", "version": 1, "room": {"name": "Imported", "createdAt": '
            '"2026-01-01T00:00:00Z"}, "messages": [{"role": "user", "status": "complete", "createdAt": '
            f'"2026-01-01T00:00:00Z", "content": {hostile_json_text(content)}, "parts": [{hostile_json_text(part)}, '
            f'{{"type": "text", "text": "hi"}}], "extra": {hostile_json_text(extra)}}}]}}')


@hypothesis_settings(PROPERTY, max_examples=40)
@given(content=st.one_of(HOSTILE_TEXT, HOSTILE_VALUES), part=HOSTILE_VALUES, extra=HOSTILE_VALUES)
def test_hostile_imports_are_refused_or_stored_and_readable(settings, content, part, extra):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    user = make_user(f"importer{next(USERNAMES)}")
    browser = Client()
    browser.force_login(user)
    before = set(Room.objects.values_list("pk", flat=True))
    upload = SimpleUploadedFile("room.json", export_document(content, part, extra).encode())
    response = browser.post("/rooms/import/", {"file": upload})
    assert response.status_code in (302, 400), response.status_code
    created = set(Room.objects.values_list("pk", flat=True)) - before
    if response.status_code == 400:
        assert not created
        return
    [room_id] = created
    for path in (f"/rooms/{room_id}/", f"/rooms/{room_id}/export.md", f"/rooms/{room_id}/export.json",
                 f"/api/rooms/{room_id}/messages/"):
        assert browser.get(path).status_code == 200, path
