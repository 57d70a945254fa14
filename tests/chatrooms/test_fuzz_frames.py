"""Property: random client frames never crash the consumer. Whatever is sent (frames of every type with
fields of any shape, naming the user's rooms, other people's, shared and missing ones; raw text;
binary), every frame gets its answer, none is `internal`, the socket stays open and serving, and
afterwards the database holds its invariants: each stream's chunk indexes run 0, 1, 2… without a gap,
no room has two live answers, and `rooms` counts what is stored."""
from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from chatrooms.models import Message, Room
from chatrooms.protocol import FRAME_FIELDS, Field, ProtocolError, frame_ref, parse_frame
from streaming.models import Stream, StreamChunk
from tests.factories import add_member, make_room, make_user
from tests.hostile import HOSTILE_NUMBERS, HOSTILE_TEXT, HOSTILE_VALUES, hostile_json_text

pytestmark = pytest.mark.django_db(transaction=True)

ANSWER_TIMEOUT = 10
USERNAMES = itertools.count()
CHAT_FRAMES = {"chat.send", "chat.regenerate", "chat.edit"}
# Direct answers with the frame's `ref`, besides `error`.
ANSWER_TYPES = {"room.created", "messages", "ack"}

# Symbols stand for ids that exist only once an example has made its world.
ROOM_SYMBOLS = ["$own", "$foreign", "$shared", "$missing"]
MESSAGE_SYMBOLS = ["$own_question", "$own_answer", "$foreign_question", "$shared_question"]

ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
    HOSTILE_NUMBERS, HOSTILE_TEXT,  # NaN, 1e999, lone surrogates, U+0000 (issue 14)
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8)), max_size=3),
)


def value_for(name: str, spec: Field) -> st.SearchStrategy[Any]:
    if name == "roomId":
        return st.one_of(st.sampled_from(ROOM_SYMBOLS), st.sampled_from(ROOM_SYMBOLS), ANY_VALUE)
    if name == "messageId":
        return st.one_of(st.sampled_from(MESSAGE_SYMBOLS), ANY_VALUE)
    if name == "since":
        return st.one_of(st.fixed_dictionaries({"streamId": st.text(max_size=40),
                                                "index": st.one_of(st.integers(-3, 50), ANY_VALUE)}), ANY_VALUE)
    if name == "username":
        return st.one_of(st.sampled_from(["$other_user", "$self", "nobody-here"]), ANY_VALUE)
    if spec.kind is str:
        longest = min((spec.max_length or 40) + 2, 120)
        return st.one_of(st.text(max_size=longest), st.text(alphabet="abc <>&\"'", min_size=1, max_size=12), ANY_VALUE)
    if spec.kind is bool:
        return st.one_of(st.booleans(), ANY_VALUE)
    return ANY_VALUE


@st.composite
def client_frames(draw: st.DrawFn) -> tuple[str, Any]:
    shape = draw(st.sampled_from(["frame"] * 6 + ["raw", "binary", "odd-type"]))
    if shape == "raw":
        return "raw", draw(st.one_of(st.text(max_size=60), HOSTILE_VALUES.map(hostile_json_text)))
    if shape == "binary":
        return "binary", draw(st.binary(max_size=30))
    kind = draw(st.sampled_from(sorted(FRAME_FIELDS)))
    frame: dict[str, Any] = {"type": draw(ANY_VALUE) if shape == "odd-type" else kind}
    for name, spec in FRAME_FIELDS.get(kind, {}).items():
        if draw(st.integers(0, 9)) < (8 if spec.required else 4):
            frame[name] = draw(value_for(name, spec))
    if draw(st.integers(0, 9)) == 0:
        frame[draw(st.text(min_size=1, max_size=10))] = draw(ANY_VALUE)  # a field no frame has
    if draw(st.integers(0, 9)) == 0:
        frame["ref"] = draw(ANY_VALUE)  # a ref of any shape (a bad one is refused, and not echoed)
    return "frame", frame


@dataclass
class World:
    user: Any
    ids: dict[str, str]


def build_world() -> World:
    number = next(USERNAMES)
    user, other = make_user(f"fuzz{number}"), make_user(f"fuzz{number}-other")
    own, foreign, shared = make_room(user, "Own"), make_room(other, "Foreign"), make_room(other, "Shared")
    add_member(shared, user)
    messages = {}
    for label, room, author in (("own", own, user), ("foreign", foreign, other), ("shared", shared, other)):
        messages[f"${label}_question"] = Message.objects.create(room=room, role="user", author=author, content="q",
                                                                 parts=[{"type": "text", "text": "q"}])
        messages[f"${label}_answer"] = Message.objects.create(room=room, role="assistant", content="a",
                                                               parts=[{"type": "text", "text": "a"}])
    ids = {"$own": str(own.pk), "$foreign": str(foreign.pk), "$shared": str(shared.pk),
           "$missing": str(shared.pk + 10_000), "$other_user": other.username, "$self": user.username}
    ids.update({symbol: str(message.pk) for symbol, message in messages.items()})
    return World(user, ids)


def resolved(frame: dict[str, Any], world: World) -> dict[str, Any]:
    return {name: world.ids.get(value, value) if isinstance(value, str) else value for name, value in frame.items()}


async def send_and_expect_answer(client: Any, shape: str, payload: Any, number: int) -> None:
    """Send one frame and wait for what answers it: a frame with its `ref` (an `error`, or its reply),
    or, for a chat frame that was taken, the `stream.start` of its request; a frame with no usable
    `ref` must get an `error` without one."""
    if shape == "binary":
        await client.communicator.send_input({"type": "websocket.receive", "bytes": payload})
    elif shape == "raw":
        await client.communicator.send_input({"type": "websocket.receive", "text": payload})
    else:
        await client.send(payload)
    ref = payload.get("ref") if shape != "raw" and shape != "binary" else None
    try:  # a frame that cannot be read (NaN, 1e999) has no ref to echo; a ref with U+0000 is not echoed
        usable_ref = ref is not None and frame_ref(parse_frame(json.dumps(payload), None)) == ref
    except ProtocolError:
        usable_ref = False
    kind = payload.get("type") if shape == "frame" else None
    request_id = payload.get("requestId") if isinstance(kind, str) and kind in CHAT_FRAMES else None

    def answers(frame: dict[str, Any]) -> bool:
        if usable_ref:
            if frame.get("ref") == ref and (frame["type"] == "error" or frame["type"] in ANSWER_TYPES):
                return True
            return request_id is not None and frame["type"] == "stream.start" and frame["requestId"] == request_id
        return frame["type"] == "error" and "ref" not in frame and "roomId" not in frame

    while True:
        try:
            frame = await client.receive(timeout=ANSWER_TIMEOUT)
        except (asyncio.TimeoutError, TimeoutError):
            pytest.fail(f"frame {number} got no answer: {payload!r}")
        assert frame["type"] != "error" or frame["code"] != "internal", (payload, frame)
        if answers(frame):
            return


def database_invariants(user: Any) -> None:
    for stream_id in Stream.objects.values_list("pk", flat=True):
        indexes = list(StreamChunk.objects.filter(stream_id=stream_id).order_by("index").values_list("index", flat=True))
        assert indexes == list(range(len(indexes))), f"stream {stream_id}: {indexes}"
    for room_id in Room.objects.values_list("pk", flat=True):
        assert Message.objects.filter(room_id=room_id, status="streaming").count() <= 1
    live_keys = list(Stream.objects.filter(status="streaming").values_list("key", flat=True))
    assert len(live_keys) == len(set(live_keys))


async def live_answers_ended(timeout: float = 15) -> None:
    count = database_sync_to_async(Message.objects.filter(status="streaming").count)
    deadline = asyncio.get_running_loop().time() + timeout
    while await count():
        assert asyncio.get_running_loop().time() < deadline, "a live answer never ended"
        await asyncio.sleep(0.05)  # polling the database, which has no event to wait on


def stored_counts(user: Any) -> dict[str, int]:
    from chatrooms.selectors import rooms_visible_to

    return {str(room.pk): Message.objects.filter(room=room).exclude(status="streaming").count()
            for room in rooms_visible_to(user)}


async def fuzz_scenario(connect_factory: Any, frames: list[tuple[str, Any]]) -> None:
    connect, close_all = connect_factory()
    try:
        world = await database_sync_to_async(build_world)()
        client = await connect(world.user)
        for number, (shape, payload) in enumerate(frames):
            if shape != "raw" and shape != "binary":
                payload = resolved(payload, world)
                if "ref" not in payload:
                    payload["ref"] = f"fuzz-{number}"
            await send_and_expect_answer(client, shape, payload, number)

        await client.send({"type": "room.create", "name": "Still serving", "ref": "after"})
        await client.receive_until("room.created", ref="after")
        await live_answers_ended()
        await database_sync_to_async(database_invariants)(world.user)
        fresh = await connect(world.user)
        counts = await database_sync_to_async(stored_counts)(world.user)
        listed = {room["id"]: room["messageCount"] for room in fresh.seen[-1]["rooms"]}
        assert listed == counts
        assert not [f for f in client.seen if f["type"] == "error" and f["code"] == "internal"]
    finally:
        await close_all()


@hypothesis_settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(client_frames(), min_size=1, max_size=6))
def test_random_frames_never_crash_and_the_database_stays_consistent(
    scripted_model, settings, connect_factory, frames
):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    async_to_sync(fuzz_scenario)(connect_factory, frames)
