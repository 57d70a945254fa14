"""Values no database stores (NaN, lone surrogates, U+0000) from a model, a tool or a file; tool calls
without ids; a join racing an answer's end; chunks of a stream that has ended (issue 14, items 1 and 4-7)."""
from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import connection

from chatrooms import recovery, selectors
from chatrooms.models import Message, Room
from chatrooms.scripted_model_server import ScriptedReply
from streaming.lifecycle import stream_start
from streaming.models import Stream, StreamChunk
from streaming.recorder import store_batches
from streaming.safe_json import InvalidJSON, UnsafeJSON, dumps_storable, loads_strict, storable
from tests.chatrooms.test_chat_flow import joined_room
from tests.chatrooms.test_tools import extra_tools  # noqa: F401  (a fixture)
from tests.factories import make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)


async def ask(client, text: str = "go", request_id: str = "q") -> list[dict[str, Any]]:
    await client.send({"type": "chat.send", "requestId": request_id, "text": text})
    return await client.receive_until("stream.done")


def tool_parts(message: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [part for part in message["parts"] if part["type"] == f"tool-{name}"]


async def stored_indexes(stream_id: str) -> list[int]:
    return await database_sync_to_async(list)(
        StreamChunk.objects.filter(stream_id=stream_id).order_by("index").values_list("index", flat=True))


# -- 1. NaN in a tool call's arguments ---------------------------------------------------------

async def test_nan_in_tool_call_arguments_is_a_tool_error_and_the_room_goes_on(scripted_model, connect):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("roll_dice", '{"sides": NaN}')]),
                           ScriptedReply(tokens=["Could not roll."]))
    done = (await ask(client))[-1]
    assert done["status"] == "complete"
    [part] = tool_parts(done["message"], "roll_dice")
    assert part["state"] == "output-error" and part["input"] == '{"sides": NaN}'  # kept as the text it was
    stored = await database_sync_to_async(Message.objects.get)(pk=done["message"]["id"])
    assert stored.status == "complete" and stored.parts == done["message"]["parts"]
    # The room is not locked: the next question is answered.
    scripted_model.enqueue(ScriptedReply(tokens=["Next."]))
    assert (await ask(client, request_id="q2"))[-1]["status"] == "complete"


# -- 6. A value that cannot be stored takes no chunk index --------------------------------------

async def test_a_tools_nan_and_lone_surrogates_are_stored_safely_with_no_hole_in_the_stream(
        scripted_model, connect, extra_tools):  # noqa: F811
    @extra_tools.tool("Return values no database stores.")
    def hostile() -> dict[str, Any]:
        return {"nan": float("nan"), "inf": float("-inf"), "text": "a\ud800b\x00c", "\udfff": [1e308 * 10]}

    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("hostile", "{}")]), ScriptedReply(tokens=["Done."]))
    frames = await ask(client)
    done = frames[-1]
    assert done["status"] == "complete"
    safe = {"nan": None, "inf": None, "text": "a\ufffdb\ufffdc", "\ufffd": [None]}
    [part] = tool_parts(done["message"], "hostile")
    assert part["output"] == safe
    # Every index was taken by a chunk that is stored and was sent: no hole for viewers to wait on.
    indexes = await stored_indexes(done["streamId"])
    assert indexes == list(range(done["lastIndex"] + 1))
    sent = [f["index"] for f in frames if f["type"] == "stream.chunk"]
    assert sent == indexes
    # What the model was told is what people see.
    tool_turn = [m for m in scripted_model.requests[1]["messages"] if m["role"] == "tool"][-1]
    assert json.loads(tool_turn["content"]) == safe


# -- 5. Tool calls without ids, in two steps ---------------------------------------------------

def call_without_id(sides: int) -> list[dict[str, Any]]:
    return [{"index": 0, "delta": {"tool_calls": [{"index": 0, "type": "function", "function": {
        "name": "roll_dice", "arguments": json.dumps({"sides": sides})}}]}, "finish_reason": None},
        {"index": 0, "delta": {}, "finish_reason": "tool_calls"}]


async def test_tool_calls_without_ids_in_two_steps_keep_apart(scripted_model, connect):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(ScriptedReply(raw_choices=call_without_id(6)), ScriptedReply(raw_choices=call_without_id(8)),
                           ScriptedReply(tokens=["Rolled twice."]))
    done = (await ask(client))[-1]
    parts = tool_parts(done["message"], "roll_dice")
    assert [part["input"] for part in parts] == [{"sides": 6}, {"sides": 8}]
    assert len({part["toolCallId"] for part in parts}) == 2
    assert all(part["state"] == "output-available" for part in parts)
    # The model saw two calls with two answers, each under its own id.
    history = scripted_model.requests[2]["messages"]
    asked = [call["id"] for turn in history if turn["role"] == "assistant" for call in turn.get("tool_calls") or []]
    answered = [turn["tool_call_id"] for turn in history if turn["role"] == "tool"]
    assert asked == answered == [part["toolCallId"] for part in parts]


async def test_a_model_repeating_a_tool_call_id_in_the_next_step_gets_a_new_one(scripted_model, connect):
    """The scripted server, like some real ones, names its calls by position: `call_0_roll_dice` twice."""
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("roll_dice", '{"sides": 6}')]),
                           ScriptedReply(tool_calls=[("roll_dice", '{"sides": 8}')]), ScriptedReply(tokens=["Done."]))
    done = (await ask(client))[-1]
    parts = tool_parts(done["message"], "roll_dice")
    assert [part["toolCallId"] for part in parts] == ["call_0_roll_dice", "call_0_roll_dice_2"]
    assert [part["input"] for part in parts] == [{"sides": 6}, {"sides": 8}]


# -- 1. One stale stream that cannot be finished as it is ---------------------------------------

def stale_stream_with_chunks(room: Room, bodies: list[str]) -> Stream:
    """A stream whose worker died, with chunks as an older version stored them (NaN as JSON text)."""
    stream = stream_start(key=f"room:{room.pk}", request_id=f"r-{uuid.uuid4().hex[:6]}")
    Message.objects.create(room=room, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING, stream=stream)
    StreamChunk.objects.bulk_create(StreamChunk(stream=stream, index=i, body=body) for i, body in enumerate(bodies))
    Stream.objects.filter(pk=stream.pk).update(heartbeat_at=stream.heartbeat_at.replace(year=2000))
    return stream


def test_the_sweep_finishes_every_stale_stream_even_one_holding_nan():
    owner = make_user()
    bad_room, good_room = make_room(owner, "Bad"), make_room(owner, "Good")
    bad = stale_stream_with_chunks(bad_room, [
        '{"type":"start","messageId":"1"}',
        '{"type":"tool-input-available","toolCallId":"c","toolName":"roll_dice","input":{"sides":NaN}}',
        '{"type":"text-start","id":"t"}', '{"type":"text-delta","id":"t","delta":"x\\ud800y"}',
    ])
    good = stale_stream_with_chunks(good_room, ['{"type":"start","messageId":"2"}'])
    assert recovery.streams_recover_stale() == 2
    for stream in (bad, good):
        stream.refresh_from_db()
        assert stream.status == Stream.Status.INTERRUPTED
    message = Message.objects.get(stream=bad)
    assert message.status == Message.Status.INTERRUPTED and message.content == "x\ufffdy"
    [part] = [p for p in message.parts if p["type"] == "tool-roll_dice"]
    assert part["input"] == {"sides": None}


# -- Also. Chunks for a stream that is no longer live -----------------------------------------

def test_chunks_for_a_stream_that_has_ended_are_not_stored():
    owner = make_user()
    room = make_room(owner)
    live = stale_stream_with_chunks(room, [])
    ended = stale_stream_with_chunks(make_room(owner, "Other"), [])
    Stream.objects.filter(pk=ended.pk).update(status=Stream.Status.INTERRUPTED)
    wanted = store_batches([
        (live.pk, [StreamChunk(stream_id=live.pk, index=0, body="{}")]),
        (ended.pk, [StreamChunk(stream_id=ended.pk, index=0, body="{}")]),
    ])
    assert wanted == {live.pk}
    assert list(StreamChunk.objects.filter(stream=live).values_list("index", flat=True)) == [0]
    assert not StreamChunk.objects.filter(stream=ended).exists()


# -- 4. A join whose reads straddle the end of an answer ---------------------------------------

def test_a_snapshot_taken_while_the_answer_ends_has_it_once_as_a_message_not_live():
    owner = make_user()
    room = make_room(owner)
    stream = stale_stream_with_chunks(room, ['{"type":"start","messageId":"x"}'])
    message = Message.objects.get(stream=stream)
    finished = []

    def finish_before_the_messages_are_read(execute, sql, params, many, context):
        # The answer ends between the snapshot's read of the live stream and its read of the messages.
        if not finished and sql.lstrip().upper().startswith("SELECT") and "FEEDBACK" in sql.upper():
            finished.append(True)
            Stream.objects.filter(pk=stream.pk).update(status=Stream.Status.COMPLETE)
            Message.objects.filter(pk=message.pk).update(status=Message.Status.COMPLETE, content="Final.")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(finish_before_the_messages_are_read):
        snapshot = selectors.room_snapshot_for_user(user=owner, room_id=str(room.pk), since=None)
    assert finished, "the messages were read"
    assert [m["id"] for m in snapshot.messages] == [str(message.pk)]
    assert snapshot.messages[0]["status"] == "complete"
    assert snapshot.live is None and snapshot.replay == []


# -- 7. Imports holding what cannot be stored --------------------------------------------------

@pytest.mark.parametrize(("text", "says"), [
    ('"a lone \\ud800 surrogate"', "not a JSON export"),
    ('"NaN is", NaN', "not a JSON export"),
    ('"a NUL \\u0000"', "NUL character"),
])
def test_an_import_holding_what_cannot_be_stored_is_refused_and_stores_nothing(client, text, says):
    user = make_user()
    client.force_login(user)
    document = ('{"format": "chatrooms.room-export", "version": 1, "room": {"name": "X", "createdAt": '
                '"2026-01-01T00:00:00Z"}, "messages": [{"role": "user", "status": "complete", "content": '
                f'"hi", "parts": [{{"type": "text", "text": "hi"}}], "createdAt": "2026-01-01T00:00:00Z", '
                f'"extra": [{text}]}}]}}').encode()
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = client.post("/rooms/import/", {"file": SimpleUploadedFile("room.json", document)})
    assert response.status_code == 400
    assert says in response.content.decode()
    assert not Room.objects.exists()


# -- the helpers themselves --------------------------------------------------------------------

@pytest.mark.parametrize("text", ["[NaN]", "[Infinity]", "[-Infinity]", "[1e999]", '["\\ud800"]', '{"\\udfff": 1}',
                                  "[" * 200 + "]" * 200, '["\\u0000"]', "{", ""])
def test_strict_json_refuses_what_python_json_takes(text):
    with pytest.raises(UnsafeJSON):
        loads_strict(text)


def test_strict_json_tells_bad_syntax_from_bad_values():
    with pytest.raises(InvalidJSON):
        loads_strict("[NaN]")
    with pytest.raises(UnsafeJSON) as caught:
        loads_strict('["\\u0000"]')
    assert not isinstance(caught.value, InvalidJSON)
    assert loads_strict('{"a": ["\\ud83d\\ude00", 1.5, null]}') == {"a": ["\U0001f600", 1.5, None]}


def test_storable_copies_make_every_value_safe_and_leave_safe_ones_alone():
    nested: Any = []
    for _ in range(500):
        nested = [nested]
    value, text = dumps_storable({"deep": nested, "pair": "\ud83d\ude00", "t": (1, 2), "o": object})
    assert json.loads(text) == value
    assert value["pair"] == "\U0001f600" and value["t"] == [1, 2] and value["o"] == str(object)
    assert "nested too deeply" in text
    safe = {"type": "text-delta", "id": "t", "delta": "héllo"}
    assert dumps_storable(safe) == (safe, '{"type":"text-delta","id":"t","delta":"héllo"}')
    assert storable({1: float("inf")}) == {"1": None}
    assert dumps_storable([10**5000, 2**70, -(2**63)]) == ([None, float(2**70), -(2**63)], f"[null,{float(2**70)},{-(2**63)}]")
