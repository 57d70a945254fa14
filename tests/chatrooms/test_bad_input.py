"""Bad input over the real socket: every refused frame gets its documented `error`, the connection
stays open, and nothing is written to the database.

Each table row is one frame (or raw text, or a binary frame) sent by a logged-in client. The test
checks the single answer (`error` with the expected code, `ref` echoed when the frame carried a
well-formed one), that nothing else follows it, that the database is exactly as it was, and that a
valid `room.create` afterwards still gets `room.created`.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chatrooms.models import Membership, Message, Room
from chatrooms.scripted_model_server import ScriptedReply
from streaming.models import Stream, StreamChunk
from tests.factories import add_member, make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)

KIB = 1024
REF = "case-ref-1"


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


AUTO = _Marker("AUTO")  # a JSON object gets `ref` REF and must have it echoed; raw text/binary must not get one
NO_REF = _Marker("NO_REF")  # the error must not carry `ref`
ANY_REF = _Marker("ANY_REF")  # not checked (the server need not parse a frame that is too large)


# -- the world every case runs in ----------------------------------------------------------------


@dataclass(frozen=True)
class World:
    alice: Any
    bob: Any
    mine: str  # alice's room: her message, then an answer
    mine_message: str
    mine_answer: str
    foreign: str  # bob's room; alice is not a member
    foreign_message: str
    shared: str  # bob's room; alice is a member
    shared_message: str  # bob's message in the shared room
    shared_answer: str  # the assistant's answer in the shared room
    missing: str  # no room has this id


def _exchange(room: Room, author: Any, text: str) -> tuple[Message, Message]:
    question = Message.objects.create(room=room, role=Message.Role.USER, author=author, content=text,
                                      parts=[{"type": "text", "text": text}])
    answer = Message.objects.create(room=room, role=Message.Role.ASSISTANT, content=f"Re: {text}",
                                    parts=[{"type": "text", "text": f"Re: {text}"}])
    return question, answer


def build_world() -> World:
    alice, bob = make_user("alice"), make_user("bob")
    mine = make_room(alice, "Mine")
    mine_q, mine_a = _exchange(mine, alice, "Alice asks")
    foreign = make_room(bob, "Bob's own")
    foreign_q, _ = _exchange(foreign, bob, "Bob asks privately")
    shared = make_room(bob, "Shared")
    add_member(shared, alice)
    shared_q, shared_a = _exchange(shared, bob, "Bob asks in the open")
    missing = max(Room.objects.values_list("pk", flat=True)) + 1000
    return World(
        alice=alice, bob=bob,
        mine=str(mine.pk), mine_message=str(mine_q.pk), mine_answer=str(mine_a.pk),
        foreign=str(foreign.pk), foreign_message=str(foreign_q.pk),
        shared=str(shared.pk), shared_message=str(shared_q.pk), shared_answer=str(shared_a.pk),
        missing=str(missing),
    )


@pytest.fixture
async def world(transactional_db: None, settings: Any) -> World:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # users are made per test
    return await database_sync_to_async(build_world)()


def db_counts() -> dict[str, int]:
    return {
        "Room": Room.objects.count(),
        "Message": Message.objects.count(),
        "Stream": Stream.objects.count(),
        "StreamChunk": StreamChunk.objects.count(),
        "Membership": Membership.objects.count(),
    }


def db_state(*, live: bool = False) -> dict[str, Any]:
    """Counts and every row that a refused frame could have touched. With `live`, a stream is
    running: its chunks and heartbeat are written by the recorder, so they are left out."""
    state: dict[str, Any] = {
        "counts": {k: v for k, v in db_counts().items() if not (live and k == "StreamChunk")},
        "rooms": list(Room.objects.order_by("pk").values_list(
            "pk", "owner_id", "name", "model", "system_prompt", "created_at", "last_active_at")),
        "memberships": list(Membership.objects.order_by("pk").values_list("pk", "room_id", "user_id")),
        "messages": list(Message.objects.order_by("pk").values_list(
            "pk", "room_id", "role", "author_id", "content", "parts", "status", "stream_id", "updated_at")),
        "streams": list(Stream.objects.order_by("pk").values_list(
            "pk", "key", "request_id", "status", "cancel_requested", "finished_at")),
    }
    return state


# -- sending and checking ------------------------------------------------------------------------


async def send_raw(client: Any, payload: Any) -> None:
    """A dict goes as JSON text; a str as a text frame exactly as given (even empty); bytes as a
    binary frame."""
    if isinstance(payload, bytes):
        await client.communicator.send_to(bytes_data=payload)
    elif isinstance(payload, str):
        await client.communicator.send_input({"type": "websocket.receive", "text": payload})
    else:
        await client.send(payload)


async def expect_lone_error(client: Any, code: str | frozenset[str], ref: Any) -> dict[str, Any]:
    """The next frame is `error` with this code (one of these codes), and nothing follows it."""
    frame = await client.receive()
    assert frame["type"] == "error", frame
    codes = {code} if isinstance(code, str) else set(code)
    assert frame["code"] in codes, frame
    assert isinstance(frame.get("message"), str) and frame["message"], frame
    if ref is NO_REF:
        assert "ref" not in frame, frame
    elif ref is not ANY_REF:
        assert frame.get("ref") == ref, frame
    assert await client.nothing_more(), f"more frames after the error: {client.seen[-3:]}"
    return frame


async def assert_nothing_written(before: dict[str, Any], *, live: bool = False) -> None:
    after = await database_sync_to_async(db_state)(live=live)
    assert after["counts"] == before["counts"]
    assert after == before


async def assert_still_serves(client: Any) -> None:
    """The connection is open and works: a valid `room.create` is answered `room.created`."""
    counts = await database_sync_to_async(db_counts)()
    await client.send({"type": "room.create", "name": "  Still here  ", "ref": "still-open"})
    frames = await client.receive_until("room.created")
    assert [f for f in frames if f["type"] == "error"] == [], frames
    assert frames[-1]["ref"] == "still-open" and frames[-1]["room"]["name"] == "Still here"
    after = await database_sync_to_async(db_counts)()
    assert after == {**counts, "Room": counts["Room"] + 1}


async def join(client: Any, room_id: str) -> None:
    await client.send({"type": "room.join", "roomId": room_id, "ref": "join"})
    frames = await client.receive_until("messages")
    assert frames[-1]["roomId"] == room_id and frames[-1]["ref"] == "join", frames
    assert await client.nothing_more()


# -- the table -----------------------------------------------------------------------------------


Make = Callable[[World], Any]


@dataclass(frozen=True)
class Case:
    id: str
    make: Make  # World -> dict (JSON text), str (raw text frame) or bytes (binary frame)
    code: str | frozenset[str]
    ref: Any = AUTO
    join: str | None = None  # attribute of World naming the room to join first

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


def base_frames(w: World) -> dict[str, dict[str, Any]]:
    """One valid frame of every client type; a case spoils one field of it."""
    return {
        "room.create": {"type": "room.create", "name": "New room"},
        "room.rename": {"type": "room.rename", "roomId": w.mine, "name": "Renamed"},
        "room.configure": {"type": "room.configure", "roomId": w.mine, "systemPrompt": "Be brief."},
        "room.clear": {"type": "room.clear", "roomId": w.mine},
        "room.delete": {"type": "room.delete", "roomId": w.mine},
        "room.join": {"type": "room.join", "roomId": w.mine},
        "room.leave": {"type": "room.leave", "roomId": w.mine},
        "chat.send": {"type": "chat.send", "roomId": w.mine, "requestId": "q-new", "text": "Hello"},
        "chat.regenerate": {"type": "chat.regenerate", "roomId": w.mine, "requestId": "q-new"},
        "chat.edit": {"type": "chat.edit", "requestId": "q-new", "messageId": w.mine_message, "text": "Edited"},
        "chat.cancel": {"type": "chat.cancel", "requestId": "q-live"},
        "tool.result": {"type": "tool.result", "requestId": "q-live", "toolCallId": "call-1", "output": {"ok": True}},
        "tool.approval": {"type": "tool.approval", "requestId": "q-live", "toolCallId": "call-1", "approved": True},
    }


REQUIRED: dict[str, list[str]] = {
    "room.create": ["name"],
    "room.rename": ["roomId", "name"],
    "room.configure": ["roomId"],
    "room.clear": ["roomId"],
    "room.delete": ["roomId"],
    "room.join": ["roomId"],
    "room.leave": ["roomId"],
    "chat.send": ["requestId", "text"],
    "chat.regenerate": ["requestId"],
    "chat.edit": ["requestId", "messageId", "text"],
    "chat.cancel": ["requestId"],
    "tool.result": ["requestId", "toolCallId", "output"],
    "tool.approval": ["requestId", "toolCallId", "approved"],
}

# (frame type, field, wrong value, label). Strings get a number and an object, objects get a string and a list...
ILL_TYPED: list[tuple[str, str, Any, str]] = []
for _kind, _names in {
    "room.create": ["name"], "room.rename": ["roomId", "name"], "room.configure": ["roomId", "model", "systemPrompt"],
    "room.clear": ["roomId"], "room.delete": ["roomId"], "room.join": ["roomId"], "room.leave": ["roomId"],
    "chat.send": ["requestId", "text", "roomId"], "chat.regenerate": ["requestId", "roomId"],
    "chat.edit": ["requestId", "messageId", "text"], "chat.cancel": ["requestId"],
    "tool.result": ["requestId", "toolCallId"], "tool.approval": ["requestId", "toolCallId"],
}.items():
    for _name in _names:
        ILL_TYPED.append((_kind, _name, 42, "number"))
        ILL_TYPED.append((_kind, _name, {"s": "x"}, "object"))
    for _name in _names:
        if _name != "systemPrompt":  # an empty system prompt is allowed
            ILL_TYPED.append((_kind, _name, "", "empty"))
ILL_TYPED += [
    ("room.create", "name", ["New room"], "list"),
    ("room.create", "name", True, "bool"),
    ("room.rename", "roomId", int, "int-id"),  # the room's id as a JSON number: ids are strings
    ("room.join", "roomId", int, "int-id"),
    ("chat.send", "roomId", int, "int-id"),
    ("chat.send", "body", "a string", "string"),
    ("chat.send", "body", [1, 2], "list"),
    ("chat.send", "body", 5, "number"),
    ("room.join", "since", "s:3", "string"),
    ("room.join", "since", 3, "number"),
    ("room.join", "since", [1, 3], "list"),
    ("tool.approval", "approved", "yes", "string"),
    ("tool.approval", "approved", 1, "number"),
]


def _spoil(kind: str, field: str, value: Any, *, join: str | None = None, code: str = "bad_request", label: str) -> Case:
    def make(w: World) -> dict[str, Any]:
        frame = dict(base_frames(w)[kind])
        if value is _DELETE:
            frame.pop(field, None)
        elif value is int:
            frame[field] = int(frame[field])
        else:
            frame[field] = value
        return frame

    if kind == "chat.edit":
        join = join or "mine"
    return Case(f"{kind}-{field}-{label}", make, code, join=join)


_DELETE = _Marker("DELETE")

MISSING_CASES = [
    _spoil(kind, name, _DELETE, label="missing") for kind, names in REQUIRED.items() for name in names
] + [
    _spoil(kind, name, None, label="null")
    for kind, names in REQUIRED.items() for name in names if name != "output"  # a tool's output may be null
]

ILL_TYPED_CASES = [_spoil(kind, name, value, label=label) for kind, name, value, label in ILL_TYPED]


def _with(kind: str, **fields: Any) -> Make:
    """A valid frame of `kind` with some fields replaced; callables get the World."""
    def make(w: World) -> dict[str, Any]:
        frame = dict(base_frames(w)[kind])
        for name, value in fields.items():
            frame[name] = value(w) if callable(value) else value
        return frame
    return make


ROOM_CREATE = '{"type": "room.create", "name": "Sneaky"}'

FRAME_CASES = [
    # Not JSON.
    Case("not-json", lambda w: "hello there", "bad_request"),
    Case("truncated-json", lambda w: '{"type": "room.create", "name": "x"', "bad_request"),
    Case("single-quoted-json", lambda w: "{'type': 'room.create', 'name': 'x'}", "bad_request"),
    Case("json-with-trailing-garbage", lambda w: ROOM_CREATE + " tail", "bad_request"),
    Case("json-with-NaN", lambda w: '{"type": "room.create", "name": "NaN room", "n": NaN}', "bad_request"),
    Case("empty-text-frame", lambda w: "", "bad_request"),
    # Binary frames, even holding a valid frame's JSON.
    Case("binary-valid-json", lambda w: ROOM_CREATE.encode(), "bad_request"),
    Case("binary-garbage", lambda w: b"\x00\xff\xfe\x81", "bad_request"),
    # JSON, but not an object.
    Case("json-list", lambda w: "[" + ROOM_CREATE + "]", "bad_request"),
    Case("json-empty-list", lambda w: "[]", "bad_request"),
    Case("json-number", lambda w: "42", "bad_request"),
    Case("json-string", lambda w: '"room.create"', "bad_request"),
    Case("json-null", lambda w: "null", "bad_request"),
    Case("json-true", lambda w: "true", "bad_request"),
    # `type`.
    Case("type-missing", lambda w: {"name": "x"}, "bad_request"),
    Case("type-null", lambda w: {"type": None, "name": "x"}, "bad_request"),
    Case("type-number", lambda w: {"type": 7, "name": "x"}, "bad_request"),
    Case("type-bool", lambda w: {"type": True, "name": "x"}, "bad_request"),
    Case("type-list", lambda w: {"type": ["room.create"], "name": "x"}, "bad_request"),
    Case("type-object", lambda w: {"type": {"room": "create"}, "name": "x"}, "bad_request"),
    Case("type-unknown", lambda w: {"type": "room.explode", "roomId": w.mine}, "unknown_type"),
    Case("type-server-frame-hello", lambda w: {"type": "hello"}, "unknown_type"),
    Case("type-server-frame-stream-chunk", lambda w: {"type": "stream.chunk"}, "unknown_type"),
    Case("type-wrong-case", lambda w: {"type": "Room.Create", "name": "x"}, "unknown_type"),
    # NUL characters (PostgreSQL can neither store nor compare them), anywhere in a frame.
    Case("chat.cancel-requestId-nul", _with("chat.cancel", requestId="\x00"), "bad_request"),
    Case("chat.send-text-nul", _with("chat.send", text="a\x00b"), "bad_request"),
    Case("room.create-name-nul", _with("room.create", name="x\x00"), "bad_request"),
    Case("chat.send-body-key-nul", _with("chat.send", body={"deep": [{"k\x00": 1}]}), "bad_request"),
    Case("tool.result-output-nul", lambda w: {"type": "tool.result", "requestId": "r", "toolCallId": "c",
                                               "output": {"x": ["\x00"]}}, "bad_request"),
    # Lone surrogates (JSON's "\ud800" escapes): no UTF-8 encoder takes one, so none is stored or echoed.
    Case("chat.send-text-lone-surrogate", _with("chat.send", text="a\ud800b"), "bad_request"),
    Case("room.create-name-lone-surrogate", _with("room.create", name="\udfff"), "bad_request"),
    Case("chat.send-body-key-lone-surrogate", _with("chat.send", body={"deep": [{"k\ud83d": 1}]}), "bad_request"),
    Case("tool.result-output-lone-surrogate", lambda w: {"type": "tool.result", "requestId": "r", "toolCallId": "c",
                                                          "output": {"x": ["\ud800"]}}, "bad_request"),
    Case("ref-lone-surrogate-refused", lambda w: {"type": "room.create", "name": "Bad ref", "ref": "\ud800"},
         "bad_request", ref=NO_REF),
    Case("ref-nul-refused", lambda w: {"type": "room.create", "name": "Bad ref", "ref": "r\x00"},
         "bad_request", ref=NO_REF),
    # Lengths.
    Case("room.create-name-101", _with("room.create", name="n" * 101), "bad_request"),
    Case("room.create-name-101-after-trim", _with("room.create", name="  " + "n" * 101 + "\t "), "bad_request"),
    Case("room.create-name-spaces", _with("room.create", name="    "), "bad_request"),
    Case("room.create-name-whitespace", _with("room.create", name=" \t\n\r "), "bad_request"),
    Case("room.rename-name-101-after-trim", _with("room.rename", name=" " + "n" * 101 + " "), "bad_request"),
    Case("room.rename-name-whitespace", _with("room.rename", name=" \t "), "bad_request"),
    Case("chat.send-text-32001", _with("chat.send", text="t" * 32_001), "bad_request"),
    Case("chat.edit-text-32001", _with("chat.edit", text="t" * 32_001), "bad_request", join="mine"),
    Case("chat.send-requestId-65", _with("chat.send", requestId="r" * 65), "bad_request"),
    Case("chat.regenerate-requestId-65", _with("chat.regenerate", requestId="r" * 65), "bad_request"),
    Case("chat.edit-requestId-65", _with("chat.edit", requestId="r" * 65), "bad_request", join="mine"),
    Case("chat.cancel-requestId-65", _with("chat.cancel", requestId="r" * 65), "bad_request"),
    Case("room.configure-systemPrompt-8001", _with("room.configure", systemPrompt="p" * 8001), "bad_request"),
    Case("room.configure-model-not-offered", _with("room.configure", model="openai/not-offered"), "bad_request"),
    Case("room.configure-model-201", _with("room.configure", model="m" * 201), "bad_request"),
    Case("room.configure-model-label", _with("room.configure", model="Scripted"), "bad_request"),
    # Sizes.
    Case("frame-over-64KiB-text", _with("chat.send", text="t" * (64 * KIB + 1)), "too_large", ref=ANY_REF),
    Case("frame-over-64KiB-extra-field",
         _with("room.create", padding="p" * (64 * KIB)), "too_large", ref=ANY_REF),
    Case("frame-over-64KiB-utf8-bytes",  # 22,000 characters, 66,000 bytes: under 64 Ki characters, over 64 KiB
         _with("chat.send", text="\u20ac" * 22_000), "too_large", ref=ANY_REF),
    Case("frame-over-64KiB-not-json", lambda w: "x" * (64 * KIB + 10), "too_large", ref=ANY_REF),
    Case("body-over-16KiB", _with("chat.send", body={"blob": "b" * (16 * KIB)}), "too_large"),
    Case("body-over-16KiB-many-keys", _with("chat.send", body={f"k{i}": i for i in range(2000)}), "too_large"),
    # A malformed `since`.
    Case("since-streamId-missing", _with("room.join", since={"index": 3}), "bad_request"),
    Case("since-index-missing", _with("room.join", since={"streamId": "s-1"}), "bad_request"),
    Case("since-streamId-number", _with("room.join", since={"streamId": 5, "index": 3}), "bad_request"),
    Case("since-streamId-empty", _with("room.join", since={"streamId": "", "index": 3}), "bad_request"),
    Case("since-streamId-65", _with("room.join", since={"streamId": "s" * 65, "index": 3}), "bad_request"),
    Case("since-index-string", _with("room.join", since={"streamId": "s-1", "index": "3"}), "bad_request"),
    Case("since-index-float", _with("room.join", since={"streamId": "s-1", "index": 1.5}), "bad_request"),
    Case("since-index-bool", _with("room.join", since={"streamId": "s-1", "index": True}), "bad_request"),
    Case("since-index-below-minus-1", _with("room.join", since={"streamId": "s-1", "index": -2}), "bad_request"),
    # `ref`: echoed when well formed, refused (and not echoed) when not, and a bad ref stops the frame.
    Case("ref-64-echoed", lambda w: {"name": "no type", "ref": "r" * 64}, "bad_request", ref="r" * 64),
    Case("ref-echoed-on-unknown-type", lambda w: {"type": "nope", "ref": "u-1"}, "unknown_type", ref="u-1"),
    Case("no-ref-none-echoed", lambda w: {"type": "nope"}, "unknown_type", ref=NO_REF),
    Case("ref-65-refused", lambda w: {"type": "room.create", "name": "Bad ref", "ref": "r" * 65},
         "bad_request", ref=NO_REF),
    Case("ref-number-refused", lambda w: {"type": "room.create", "name": "Bad ref", "ref": 7},
         "bad_request", ref=NO_REF),
    Case("ref-list-refused", lambda w: {"type": "room.create", "name": "Bad ref", "ref": ["a"]},
         "bad_request", ref=NO_REF),
    Case("ref-object-refused", lambda w: {"type": "chat.send", "roomId": w.mine, "requestId": "q-new",
                                          "text": "Hello", "ref": {"id": 1}}, "bad_request", ref=NO_REF),
    # Messages that cannot be edited.
    Case("chat.edit-message-unknown", _with("chat.edit", messageId="987654321"), "not_found", join="mine"),
    Case("chat.edit-message-not-numeric", _with("chat.edit", messageId="abc"), "not_found", join="mine"),
    Case("chat.edit-message-in-foreign-room", _with("chat.edit", messageId=lambda w: w.foreign_message),
         "not_found", join="mine"),
    Case("chat.edit-message-in-other-visible-room", _with("chat.edit", messageId=lambda w: w.shared_message),
         "not_found", join="mine"),
    Case("chat.edit-other-users-message", _with("chat.edit", messageId=lambda w: w.shared_message),
         "forbidden", join="shared"),
    Case("chat.edit-assistant-message", _with("chat.edit", messageId=lambda w: w.shared_answer),
         "forbidden", join="shared"),
    Case("chat.edit-own-assistant-message", _with("chat.edit", messageId=lambda w: w.mine_answer),
         "forbidden", join="mine"),
    # No room given and none active: the protocol names no code; a refusal is enough.
    Case("chat.edit-without-active-room", _with("chat.edit"), frozenset({"bad_request", "not_found"})),
    Case("chat.send-without-room", lambda w: {"type": "chat.send", "requestId": "q-new", "text": "Hi"},
         frozenset({"bad_request", "not_found"})),
    Case("chat.regenerate-without-room", lambda w: {"type": "chat.regenerate", "requestId": "q-new"},
         frozenset({"bad_request", "not_found"})),
    # A member is not the owner.
    Case("member-room.rename", _with("room.rename", roomId=lambda w: w.shared), "forbidden"),
    Case("member-room.configure-systemPrompt", _with("room.configure", roomId=lambda w: w.shared), "forbidden"),
    Case("member-room.configure-model",
         lambda w: {"type": "room.configure", "roomId": w.shared, "model": "openai/other"}, "forbidden"),
    Case("member-room.clear", _with("room.clear", roomId=lambda w: w.shared), "forbidden"),
    Case("member-room.delete", _with("room.delete", roomId=lambda w: w.shared), "forbidden"),
    # Nothing streams.
    Case("chat.cancel-unknown-requestId", _with("chat.cancel", requestId="no-such-request"), "not_found"),
    Case("chat.cancel-finished-message-id", _with("chat.cancel", requestId=lambda w: w.mine_answer), "not_found"),
]


@pytest.mark.parametrize("case", [c.param() for c in MISSING_CASES + ILL_TYPED_CASES + FRAME_CASES])
async def test_bad_frame_gets_its_error_and_changes_nothing(case: Case, world: World, scripted_model, connect):
    client = await connect(world.alice)
    if case.join:
        await join(client, getattr(world, case.join))
    before = await database_sync_to_async(db_state)()

    payload = case.make(world)
    ref = case.ref
    if ref is AUTO:
        if isinstance(payload, dict):
            payload.setdefault("ref", REF)
            ref = REF
        else:
            ref = NO_REF
    await send_raw(client, payload)
    await expect_lone_error(client, case.code, ref)

    await assert_nothing_written(before)
    await assert_still_serves(client)


# -- rooms the user cannot see -------------------------------------------------------------------

ROOM_FRAMES: dict[str, Callable[[str], dict[str, Any]]] = {
    "room.rename": lambda room: {"type": "room.rename", "roomId": room, "name": "Taken over"},
    "room.configure-systemPrompt": lambda room: {"type": "room.configure", "roomId": room, "systemPrompt": "Obey me"},
    "room.configure-model": lambda room: {"type": "room.configure", "roomId": room, "model": "openai/other"},
    "room.clear": lambda room: {"type": "room.clear", "roomId": room},
    "room.delete": lambda room: {"type": "room.delete", "roomId": room},
    "room.join": lambda room: {"type": "room.join", "roomId": room},
    "room.join-since": lambda room: {"type": "room.join", "roomId": room,
                                     "since": {"streamId": "00000000-0000-0000-0000-000000000000", "index": 0}},
    "chat.send": lambda room: {"type": "chat.send", "roomId": room, "requestId": "q-x", "text": "Let me in"},
    "chat.send-with-body": lambda room: {"type": "chat.send", "roomId": room, "requestId": "q-x", "text": "Hi",
                                         "body": {"k": "v"}},
    "chat.regenerate": lambda room: {"type": "chat.regenerate", "roomId": room, "requestId": "q-x"},
}

# Rooms alice cannot see: bob's own, one that does not exist, ids that cannot be ids.
UNSEEN_TARGETS: dict[str, Callable[[World], str]] = {
    "foreign": lambda w: w.foreign,
    "nonexistent": lambda w: w.missing,
    "not-numeric": lambda w: "abc",
    "zero": lambda w: "0",
    "negative": lambda w: "-1",
    "decimal": lambda w: f"{w.foreign}.0",
    "huge": lambda w: "9" * 30,
}


@pytest.mark.parametrize("frame_name", list(ROOM_FRAMES))
async def test_unseen_room_is_not_found_and_indistinguishable(frame_name: str, world: World, scripted_model, connect):
    """`not_found` for every room the user cannot see, byte for byte the same answer whether the
    room exists (bob's) or not."""
    client = await connect(world.alice)
    await join(client, world.mine)  # an active room must not change the answer, nor be lost
    before = await database_sync_to_async(db_state)()

    raw: dict[str, str] = {}
    for target, room_of in UNSEEN_TARGETS.items():
        await client.send({**ROOM_FRAMES[frame_name](room_of(world)), "ref": "probe"})
        raw[target] = await client.communicator.receive_from(timeout=10)
        assert await client.nothing_more(), f"{target}: more frames after the error"
        frame = json.loads(raw[target])
        assert frame["type"] == "error" and frame["code"] == "not_found" and frame["ref"] == "probe", (target, frame)

    assert raw["foreign"] == raw["nonexistent"]  # byte for byte
    assert set(raw.values()) == {raw["nonexistent"]}, raw
    assert world.foreign not in raw["foreign"]  # the answer does not name the room

    await assert_nothing_written(before)
    # Still in the room it had joined: a chat.send without roomId goes there.
    await client.send({"type": "chat.send", "requestId": "q-after", "text": "Still mine?"})
    frames = await client.receive_until("stream.done", requestId="q-after")
    created = next(f for f in frames if f["type"] == "message.created")
    assert created["roomId"] == world.mine
    await assert_still_serves(client)


async def test_foreign_room_left_intact_after_every_attempt(world: World, scripted_model, connect):
    """Every room frame at bob's room, one after another on one socket: bob's room, its messages and
    bob's view of it are untouched, and bob's socket hears nothing."""
    bob = await connect(world.bob)
    client = await connect(world.alice)
    before = await database_sync_to_async(db_state)()
    for name, make in ROOM_FRAMES.items():
        await client.send({**make(world.foreign), "ref": name})
        await expect_lone_error(client, "not_found", name)
    await assert_nothing_written(before)
    assert await bob.nothing_more()
    await bob.send({"type": "room.join", "roomId": world.foreign})
    messages = (await bob.receive_until("messages"))[-1]["messages"]
    assert [m["id"] for m in messages][0] == world.foreign_message and len(messages) == 2


# -- streaming: busy and cancel ------------------------------------------------------------------


async def start_held_stream(client: Any, room_id: str, request_id: str) -> dict[str, Any]:
    """Send a message whose answer streams "a" and then stays open; returns `stream.start` once the
    "a" has arrived and the `rooms` showing the room as streaming has been received."""
    await client.send({"type": "chat.send", "roomId": room_id, "requestId": request_id, "text": "First"})
    start = None
    got_delta = got_rooms = False
    while not (start and got_delta and got_rooms):
        frame = await client.receive()
        assert frame["type"] != "error", frame
        if frame["type"] == "stream.start" and frame["requestId"] == request_id:
            start = frame
        elif frame["type"] == "stream.chunk" and frame["chunk"].get("type") == "text-delta":
            assert frame["chunk"]["delta"] == "a"
            got_delta = True
        elif frame["type"] == "rooms" and start is not None:
            room = next(r for r in frame["rooms"] if r["id"] == room_id)
            got_rooms = got_rooms or room["streaming"]
    assert await client.nothing_more()
    return start


async def cancel_and_wait(client: Any, request_id: str) -> dict[str, Any]:
    await client.send({"type": "chat.cancel", "requestId": request_id, "ref": "cancel"})
    frames = await client.receive_until("stream.done", requestId=request_id)
    assert any(f["type"] == "ack" and f.get("ref") == "cancel" for f in frames), frames
    assert [f for f in frames if f["type"] == "error"] == [], frames
    done = frames[-1]
    assert done["status"] == "aborted" and done["message"]["content"] == "a"
    return done


async def test_busy_while_streaming_writes_nothing(world: World, scripted_model, connect):
    scripted_model.enqueue(ScriptedReply(tokens=["a"], hold_open=True))
    client = await connect(world.alice)
    await start_held_stream(client, world.mine, "q-first")
    before = await database_sync_to_async(db_state)(live=True)

    attempts = [
        ("send-same-room", {"type": "chat.send", "roomId": world.mine, "requestId": "q-2", "text": "Me too"}),
        ("send-active-room", {"type": "chat.send", "requestId": "q-3", "text": "And me"}),
        ("send-same-requestId", {"type": "chat.send", "roomId": world.mine, "requestId": "q-first", "text": "Again"}),
        ("send-with-body", {"type": "chat.send", "requestId": "q-4", "text": "Body", "body": {"k": 1}}),
        ("regenerate", {"type": "chat.regenerate", "roomId": world.mine, "requestId": "q-5"}),
        ("regenerate-active-room", {"type": "chat.regenerate", "requestId": "q-6"}),
        ("edit", {"type": "chat.edit", "requestId": "q-7", "messageId": world.mine_message, "text": "Changed"}),
    ]
    for name, frame in attempts:
        await client.send({**frame, "ref": name})
        await expect_lone_error(client, "busy", name)
        await assert_nothing_written(before, live=True)

    await cancel_and_wait(client, "q-first")
    # Only the first exchange was added: nothing of the busy attempts, even after the stream ended.
    messages = await database_sync_to_async(list)(
        Message.objects.filter(room_id=int(world.mine)).order_by("pk").values_list("role", "content", "status"))
    assert messages == [("user", "Alice asks", "complete"), ("assistant", "Re: Alice asks", "complete"),
                        ("user", "First", "complete"), ("assistant", "a", "aborted")]
    assert await database_sync_to_async(Stream.objects.count)() == 1
    assert len(scripted_model.requests) == 1
    await assert_still_serves(client)


async def test_member_sending_to_a_streaming_room_is_busy(world: World, scripted_model, connect):
    """The busy rule is per room, not per connection: bob streams in the shared room, alice is refused."""
    scripted_model.enqueue(ScriptedReply(tokens=["a"], hold_open=True))
    bob = await connect(world.bob)
    alice = await connect(world.alice)
    await start_held_stream(bob, world.shared, "q-bob")
    await alice.send({"type": "room.join", "roomId": world.shared})
    joined = await alice.receive_until("stream.replay_complete")  # messages, resuming, the replayed "a"
    assert [f["type"] for f in joined if f["type"] != "rooms"][:2] == ["messages", "stream.resuming"]
    assert await alice.nothing_more()
    before = await database_sync_to_async(db_state)(live=True)
    await alice.send({"type": "chat.send", "roomId": world.shared, "requestId": "q-alice", "text": "Me!",
                      "ref": "alice-send"})
    await expect_lone_error(alice, "busy", "alice-send")
    await alice.send({"type": "chat.regenerate", "requestId": "q-alice", "ref": "alice-regenerate"})
    await expect_lone_error(alice, "busy", "alice-regenerate")
    assert await alice.nothing_more()
    await assert_nothing_written(before, live=True)
    assert await bob.nothing_more()  # bob saw no message.created from alice
    await cancel_and_wait(bob, "q-bob")
    await assert_still_serves(alice)


async def test_cancel_of_another_users_stream_is_not_found(world: World, scripted_model, connect):
    scripted_model.enqueue(ScriptedReply(tokens=["a"], hold_open=True))
    bob = await connect(world.bob)
    alice = await connect(world.alice)
    start = await start_held_stream(bob, world.foreign, "q-private")
    before = await database_sync_to_async(db_state)(live=True)

    await alice.send({"type": "chat.cancel", "requestId": "q-private", "ref": "steal"})
    await expect_lone_error(alice, "not_found", "steal")
    await alice.send({"type": "chat.cancel", "requestId": "q-unknown", "ref": "unknown"})
    unknown = await expect_lone_error(alice, "not_found", "unknown")
    assert unknown["message"] == alice.seen[-2]["message"]  # the same answer as for a request that is not hers

    await assert_nothing_written(before, live=True)
    stream = await database_sync_to_async(Stream.objects.get)(pk=start["streamId"])
    assert stream.status == "streaming" and not stream.cancel_requested
    assert await bob.nothing_more()  # bob's answer runs on
    await cancel_and_wait(bob, "q-private")
    await assert_still_serves(alice)


# -- who may connect -----------------------------------------------------------------------------


async def test_anonymous_socket_is_refused(world: World, connect):
    client = await connect(None, expect_hello=False)
    assert client.connected is False


async def test_forged_session_cookie_is_refused(world: World):
    from config.asgi import application

    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=[
        (b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000"),
        (b"cookie", b"sessionid=forged0000000000000000000000000"),
    ])
    try:
        connected, _code = await communicator.connect(timeout=10)
        assert connected is False
    finally:
        await communicator.disconnect()


@pytest.mark.parametrize("origin", [
    "http://evil.example",
    "https://evil.example",
    "http://127.0.0.1.evil.example",
    "http://localhost.evil.example:8000",
])
async def test_foreign_origin_is_refused(origin: str, world: World, connect):
    before = await database_sync_to_async(db_state)()
    client = await connect(world.alice, origin=origin, expect_hello=False)
    assert client.connected is False
    await assert_nothing_written(before)


# -- the limits themselves are allowed -----------------------------------------------------------


async def receive_answer(client: Any, frame_type: str) -> list[dict[str, Any]]:
    """Frames up to `frame_type`, or up to an `error`, whichever comes first."""
    frames = []
    while not frames or frames[-1]["type"] not in (frame_type, "error"):
        frames.append(await client.receive())
    return frames


async def test_values_at_the_limits_are_accepted(world: World, scripted_model, connect):
    """The refusals above are not over-eager: each limit itself is allowed."""
    client = await connect(world.alice)
    await client.send({"type": "room.create", "name": "  " + "n" * 100 + "  ", "ref": "r" * 64})
    created = (await receive_answer(client, "room.created"))[-1]
    assert created["type"] == "room.created", created
    assert created["ref"] == "r" * 64 and created["room"]["name"] == "n" * 100
    room_id = created["room"]["id"]

    await client.send({"type": "room.configure", "roomId": room_id, "systemPrompt": "p" * 8000,
                       "model": "openai/other", "ref": "configure"})
    answer = (await receive_answer(client, "ack"))[-1]
    assert answer == {"type": "ack", "ref": "configure"}

    body = {"blob": "b" * (16 * KIB - 20)}  # its JSON is 16,382 bytes
    assert len(json.dumps(body).encode()) <= 16 * KIB
    await client.send({"type": "chat.send", "roomId": room_id, "requestId": "q" * 64, "text": "t" * 32_000,
                       "body": body, "ref": "send"})
    frames = await receive_answer(client, "stream.done")
    assert frames[-1]["type"] == "stream.done", frames[-1]
    assert frames[-1]["status"] == "complete" and frames[-1]["requestId"] == "q" * 64


async def test_non_ascii_body_under_16KiB_is_accepted(world: World, scripted_model, connect):
    """5,000 x "é" is 10,000 bytes of UTF-8 (10,012 as the JSON object): well under 16 KiB, on the
    wire and in any encoding a client would use, so it must not be `too_large`."""
    client = await connect(world.alice)
    body = {"note": "\u00e9" * 5000}
    assert len(json.dumps(body, ensure_ascii=False).encode()) < 16 * KIB
    await client.send({"type": "chat.send", "roomId": world.mine, "requestId": "q-accent", "text": "Hi",
                       "body": body, "ref": "send"})
    frames = await receive_answer(client, "stream.done")
    assert frames[-1]["type"] == "stream.done", frames[-1]
    assert frames[-1]["status"] == "complete"


@pytest.mark.parametrize("target", ["foreign", "missing"])
async def test_leaving_a_room_one_cannot_see_is_not_found_and_keeps_the_active_room(scripted_model, connect, target):
    alice = await database_sync_to_async(make_user)("alice")
    bob = await database_sync_to_async(make_user)("bob")
    foreign = await database_sync_to_async(make_room)(bob, "Bob's")
    mine = await database_sync_to_async(make_room)(alice, "Mine")
    client = await connect(alice)
    await client.send({"type": "room.join", "roomId": str(mine.pk)})
    await client.receive_until("messages")
    room_id = str(foreign.pk) if target == "foreign" else "999999"
    await client.send({"type": "room.leave", "roomId": room_id, "ref": "l"})
    error = (await client.receive_until("error"))[-1]
    assert (error["code"], error["ref"]) == ("not_found", "l")
    await client.send({"type": "chat.send", "requestId": "q", "text": "still here"})
    assert (await client.receive_until("stream.done"))[-1]["message"]["content"] == "Echo: still here"
