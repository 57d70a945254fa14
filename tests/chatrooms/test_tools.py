"""Tools over the real socket: approvals, client-side and dynamic client tools, preliminary results,
data parts, and the limits on what a message may hold."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.db import database_sync_to_async

from chatrooms import recovery, tools
from chatrooms.models import Message, PendingToolCall, Room
from chatrooms.scripted_model_server import ScriptedReply
from streaming.models import StreamChunk
from tests.factories import add_member, make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def chunks_of(frames: list[dict[str, Any]], kind: str | None = None) -> list[dict[str, Any]]:
    chunks = [f["chunk"] for f in frames if f["type"] == "stream.chunk"]
    return [c for c in chunks if kind is None or c["type"] == kind]


def tool_part(message: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in message["parts"] if p["type"] == f"tool-{name}")


@pytest.fixture
def extra_tools():
    """Register tools for one test through the public registry, and take them out again after."""
    before = dict(tools.REGISTRY)
    yield tools
    tools.REGISTRY.clear()
    tools.REGISTRY.update(before)


async def room_with_client(connect, name: str = "Tools") -> tuple[Any, Any, str]:
    user = await database_sync_to_async(make_user)()
    room = await database_sync_to_async(make_room)(user, name)
    client = await connect(user)
    await client.send({"type": "room.join", "roomId": str(room.pk)})
    await client.receive_until("messages")
    return user, client, str(room.pk)


async def ask(client, room_id: str, text: str, **extra: Any) -> None:
    await client.send({"type": "chat.send", "roomId": room_id, "requestId": "q1", "text": text, **extra})


async def stored_chunks(stream_id: str) -> list[dict[str, Any]]:
    bodies = await database_sync_to_async(list)(
        StreamChunk.objects.filter(stream_id=stream_id).order_by("index").values_list("body", flat=True))
    return [json.loads(body) for body in bodies]


# -- approval ----------------------------------------------------------------------------------


async def test_an_approved_tool_runs_and_the_answer_goes_on(scripted_model, connect):
    _user, client, room_id = await room_with_client(connect)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("rename_room", '{"name": "Holiday plans"}')]),
                           ScriptedReply(tokens=["Renamed."]))
    await ask(client, room_id, "rename this room to Holiday plans")
    frames = await client.receive_until("message.updated")
    request = chunks_of(frames, "tool-approval-request")[0]
    call_id = request["toolCallId"]
    assert request["approvalId"]
    updated = frames[-1]
    part = tool_part(updated["message"], "rename_room")
    assert part["state"] == "approval-requested" and part["input"] == {"name": "Holiday plans"}
    assert (await database_sync_to_async(lambda: Room.objects.get(pk=room_id).name)()) == "Tools"

    await client.send({"type": "tool.approval", "requestId": "q1", "toolCallId": call_id, "approved": True, "ref": "a1"})
    frames = await client.receive_until("stream.done")
    assert {"type": "ack", "ref": "a1"} in frames
    kinds = [c["type"] for c in chunks_of(frames)]
    assert kinds.index("tool-approval-response") < kinds.index("tool-output-available")
    assert chunks_of(frames, "tool-approval-response")[0]["approved"] is True
    done = frames[-1]
    part = tool_part(done["message"], "rename_room")
    assert part["state"] == "output-available" and part["output"] == {"renamed": True, "name": "Holiday plans"}
    assert part["approval"] == {"id": request["approvalId"], "approved": True}
    assert done["message"]["content"] == "Renamed."
    assert (await database_sync_to_async(lambda: Room.objects.get(pk=room_id).name)()) == "Holiday plans"
    tool_messages = [m for m in scripted_model.requests[1]["messages"] if m["role"] == "tool"]
    assert json.loads(tool_messages[-1]["content"]) == {"renamed": True, "name": "Holiday plans"}
    # Answered once: a second answer finds nothing waiting.
    await client.send({"type": "tool.approval", "requestId": "q1", "toolCallId": call_id, "approved": True, "ref": "a2"})
    error = (await client.receive_until("error"))[-1]
    assert error["code"] == "not_found" and error["ref"] == "a2"


async def test_a_denied_tool_does_not_run_and_the_model_hears_why(scripted_model, connect):
    _user, client, room_id = await room_with_client(connect)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("rename_room", '{"name": "Nope"}')]),
                           ScriptedReply(tokens=["Fine."]))
    await ask(client, room_id, "rename this room to Nope")
    frames = await client.receive_until("message.updated")
    call_id = chunks_of(frames, "tool-approval-request")[0]["toolCallId"]
    await client.send({"type": "tool.approval", "requestId": "q1", "toolCallId": call_id, "approved": False})
    frames = await client.receive_until("stream.done")
    assert chunks_of(frames, "tool-output-denied") == [{"type": "tool-output-denied", "toolCallId": call_id}]
    assert tool_part(frames[-1]["message"], "rename_room")["state"] == "output-denied"
    assert (await database_sync_to_async(lambda: Room.objects.get(pk=room_id).name)()) == "Tools"
    tool_result = [m for m in scripted_model.requests[1]["messages"] if m["role"] == "tool"][-1]
    assert json.loads(tool_result["content"])["denied"] is True


async def test_an_unanswered_approval_times_out_as_a_tool_error(scripted_model, connect, settings):
    settings.TOOL_WAIT_SECONDS = 1
    _user, client, room_id = await room_with_client(connect)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("rename_room", '{"name": "Late"}')]),
                           ScriptedReply(tokens=["Nobody answered."]))
    await ask(client, room_id, "rename this room to Late")
    frames = await client.receive_until("stream.done")
    call_id = chunks_of(frames, "tool-approval-request")[0]["toolCallId"]
    error = chunks_of(frames, "tool-output-error")[0]
    assert error == {"type": "tool-output-error", "toolCallId": call_id,
                     "errorText": "No approval came within 1 seconds."}
    assert frames[-1]["status"] == "complete"
    assert tool_part(frames[-1]["message"], "rename_room")["state"] == "output-error"
    await client.send({"type": "tool.approval", "requestId": "q1", "toolCallId": call_id, "approved": True})
    assert (await client.receive_until("error"))[-1]["code"] == "not_found"
    assert (await database_sync_to_async(lambda: Room.objects.get(pk=room_id).name)()) == "Tools"


async def test_only_someone_who_sees_the_room_can_answer(scripted_model, connect):
    owner, client, room_id = await room_with_client(connect)
    member = await database_sync_to_async(make_user)("bob")
    stranger = await database_sync_to_async(make_user)("eve")
    await database_sync_to_async(add_member)(await database_sync_to_async(Room.objects.get)(pk=room_id), member)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("get_local_time", "{}")]), ScriptedReply(tokens=["Thanks."]))
    await ask(client, room_id, "what is my local time?")
    frames = await client.receive_until("message.updated")
    call_id = chunks_of(frames, "tool-input-available")[0]["toolCallId"]

    eve = await connect(stranger)
    await eve.send({"type": "tool.result", "requestId": "x", "toolCallId": call_id, "output": {"localTime": "hacked"}})
    assert (await eve.receive_until("error"))[-1]["code"] == "not_found"
    # An approval is not a result: the call waits for a result only.
    await client.send({"type": "tool.approval", "requestId": "q1", "toolCallId": call_id, "approved": True})
    assert (await client.receive_until("error"))[-1]["code"] == "not_found"
    await client.send({"type": "tool.result", "requestId": "q1", "toolCallId": "call_that_never_was", "output": 1})
    assert (await client.receive_until("error"))[-1]["code"] == "not_found"

    bob = await connect(member)  # a member answers from another connection, not joined to the room
    await bob.send({"type": "tool.result", "requestId": "x", "toolCallId": call_id, "ref": "r",
                    "output": {"localTime": "2026-11-26T21:00:00+01:00", "timeZone": "Europe/Paris"}})
    assert (await bob.receive_until("ack"))[-1]["ref"] == "r"
    done = (await client.receive_until("stream.done"))[-1]
    assert tool_part(done["message"], "get_local_time")["output"]["timeZone"] == "Europe/Paris"
    assert done["message"]["content"] == "Thanks."


# -- client-side tools -------------------------------------------------------------------------


async def receive_until_chunk(client, kind: str) -> dict[str, Any]:
    while True:
        frame = await client.receive()
        if frame["type"] == "stream.chunk" and frame["chunk"]["type"] == kind:
            return frame["chunk"]


@pytest.mark.parametrize("tool_name", ["get_local_time", "rename_room"])
async def test_an_answer_sent_the_instant_its_request_arrives_is_taken(scripted_model, connect, tool_name):
    """The chunk that asks for an answer goes out only once the answer would be taken: a client that
    answers without waiting for anything else (the browser does) is never told nothing waits."""
    _user, client, room_id = await room_with_client(connect)
    for attempt in range(5):
        if tool_name == "get_local_time":
            scripted_model.enqueue(ScriptedReply(tool_calls=[("get_local_time", "{}")]), ScriptedReply(tokens=["Ok."]))
        else:
            scripted_model.enqueue(ScriptedReply(tool_calls=[("rename_room", json.dumps({"name": f"Room {attempt}"}))]),
                                   ScriptedReply(tokens=["Ok."]))
        await client.send({"type": "chat.send", "roomId": room_id, "requestId": f"q{attempt}", "text": "go"})
        if tool_name == "get_local_time":
            call_id = (await receive_until_chunk(client, "tool-input-available"))["toolCallId"]
            answer = {"type": "tool.result", "output": {"localTime": "now"}}
        else:
            call_id = (await receive_until_chunk(client, "tool-approval-request"))["toolCallId"]
            answer = {"type": "tool.approval", "approved": True}
        await client.send({**answer, "requestId": f"q{attempt}", "toolCallId": call_id, "ref": "answer"})
        frames = await client.receive_until("stream.done")
        assert [f for f in frames if f["type"] == "error"] == []
        assert {"type": "ack", "ref": "answer"} in frames
        assert frames[-1]["status"] == "complete"
        assert tool_part(frames[-1]["message"], tool_name)["state"] == "output-available"



async def test_a_client_tool_waits_for_the_clients_result(scripted_model, connect):
    _user, client, room_id = await room_with_client(connect)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("get_local_time", "{}")]),
                           ScriptedReply(tokens=["It is evening."]))
    await ask(client, room_id, "what is my local time?")
    frames = await client.receive_until("message.updated")
    available = chunks_of(frames, "tool-input-available")[0]
    assert available["toolName"] == "get_local_time"
    assert tool_part(frames[-1]["message"], "get_local_time")["state"] == "input-available"
    assert frames[-1]["message"]["status"] == "streaming"
    output = {"localTime": "2026-11-26T21:00:00+01:00", "timeZone": "Europe/Paris", "utcOffsetMinutes": 60}
    await client.send({"type": "tool.result", "requestId": "q1", "toolCallId": available["toolCallId"], "output": output})
    frames = await client.receive_until("stream.done")
    assert chunks_of(frames, "tool-output-available")[0]["output"] == output
    assert tool_part(frames[-1]["message"], "get_local_time")["output"] == output
    tool_result = [m for m in scripted_model.requests[1]["messages"] if m["role"] == "tool"][-1]
    assert json.loads(tool_result["content"]) == output
    # The model was offered the client tool with the schema from its declaration.
    offered = {t["function"]["name"] for t in scripted_model.requests[0]["tools"]}
    assert {"get_local_time", "rename_room", "roll_dice", "get_current_time"} <= offered


async def test_a_reconnect_while_an_approval_waits_shows_it_pending_and_it_can_be_answered(scripted_model, connect):
    user, client, room_id = await room_with_client(connect)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("rename_room", '{"name": "Later"}')]),
                           ScriptedReply(tokens=["Done."]))
    await ask(client, room_id, "rename this room to Later")
    frames = await client.receive_until("message.updated")
    request = chunks_of(frames, "tool-approval-request")[0]
    last_index = max(f["index"] for f in frames if f["type"] == "stream.chunk")
    stream_id = next(f["streamId"] for f in frames if f["type"] == "stream.start")
    await client.close()

    again = await connect(user)
    await again.send({"type": "room.join", "roomId": room_id})
    frames = await again.receive_until("stream.replay_complete")
    replayed = chunks_of(frames)
    assert request in replayed and not chunks_of(frames, "tool-approval-response")
    third = await connect(user)  # one that had seen part of it joins with `since`
    await third.send({"type": "room.join", "roomId": room_id, "since": {"streamId": stream_id, "index": last_index - 1}})
    frames = await third.receive_until("stream.replay_complete")
    assert [f["index"] for f in frames if f["type"] == "stream.chunk"] == [last_index]

    await again.send({"type": "tool.approval", "requestId": "q1", "toolCallId": request["toolCallId"], "approved": True})
    done = (await again.receive_until("stream.done"))[-1]
    assert done["status"] == "complete" and done["message"]["content"] == "Done."
    assert (await third.receive_until("stream.done"))[-1]["message"] == done["message"]


async def test_cancel_while_waiting_ends_the_call_as_an_error_and_answers_find_nothing(scripted_model, connect):
    _user, client, room_id = await room_with_client(connect)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("get_local_time", "{}")]))
    await ask(client, room_id, "what is my local time?")
    frames = await client.receive_until("message.updated")
    call_id = chunks_of(frames, "tool-input-available")[0]["toolCallId"]
    await client.send({"type": "chat.cancel", "requestId": "q1"})
    frames = await client.receive_until("stream.done")
    assert frames[-1]["status"] == "aborted"
    part = tool_part(frames[-1]["message"], "get_local_time")
    assert part["state"] == "output-error"
    assert chunks_of(frames, "tool-output-error")[0]["toolCallId"] == call_id  # the stream says so too
    await client.send({"type": "tool.result", "requestId": "q1", "toolCallId": call_id, "output": {}})
    assert (await client.receive_until("error"))[-1]["code"] == "not_found"
    # Its stream ended, and so did the wait: no row is left waiting for an answer.
    states = await database_sync_to_async(lambda: list(PendingToolCall.objects.values_list("state", flat=True)))()
    assert states == [PendingToolCall.State.EXPIRED]


# -- dynamic client tools ----------------------------------------------------------------------


PICK_COLOR = {"name": "pick_color", "description": "Ask the user to pick a colour.",
              "inputSchema": {"type": "object", "properties": {"palette": {"type": "array", "items": {"type": "string"}}},
                              "required": ["palette"]}}


async def test_a_client_declares_a_tool_for_one_request_and_answers_it(scripted_model, connect):
    _user, client, room_id = await room_with_client(connect)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("pick_color", '{"palette": ["red", "teal"]}')]),
                           ScriptedReply(tokens=["Teal it is."]))
    await ask(client, room_id, "pick a colour", body={"clientTools": [PICK_COLOR]})
    frames = await client.receive_until("message.updated")
    call = chunks_of(frames, "tool-input-available")[0]
    assert call["toolName"] == "pick_color" and call["input"] == {"palette": ["red", "teal"]}
    offered = {t["function"]["name"]: t["function"] for t in scripted_model.requests[0]["tools"]}
    assert offered["pick_color"]["parameters"] == PICK_COLOR["inputSchema"]
    await client.send({"type": "tool.result", "requestId": "q1", "toolCallId": call["toolCallId"], "output": "teal"})
    done = (await client.receive_until("stream.done"))[-1]
    assert tool_part(done["message"], "pick_color")["output"] == "teal"
    # The next request without the declaration does not offer it.
    scripted_model.enqueue(ScriptedReply(tokens=["Hi."]))
    await client.send({"type": "chat.send", "roomId": room_id, "requestId": "q2", "text": "hello"})
    await client.receive_until("stream.done")
    assert "pick_color" not in {t["function"]["name"] for t in scripted_model.requests[-1]["tools"]}


async def test_a_dynamic_tool_call_that_breaks_its_schema_is_an_error_not_a_wait(scripted_model, connect):
    _user, client, room_id = await room_with_client(connect)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("pick_color", '{"palette": "red"}')]),
                           ScriptedReply(tokens=["Oops."]))
    await ask(client, room_id, "pick a colour", body={"clientTools": [PICK_COLOR]})
    frames = await client.receive_until("stream.done")
    assert "is not of type 'array'" in chunks_of(frames, "tool-output-error")[0]["errorText"]


@pytest.mark.parametrize(("declared", "says"), [
    ("pick_color", "must be a list"),
    ([{"name": "has space"}], ".name must be"),
    ([{"name": "roll_dice"}], "already the name"),
    ([{"name": "a"}, {"name": "a"}], "already the name"),
    ([{"name": "a", "inputSchema": {"type": "string"}}], "of type object"),
    ([{"name": "a", "inputSchema": {"type": "object", "properties": {"x": {"type": "nonsense"}}}}], "not a valid JSON schema"),
    ([{"name": "a", "extra": 1}], "only"),
    ([{"name": f"t{i}"} for i in range(17)], "at most 16"),
    ([{"name": "a", "description": "x" * 1001}], "description"),
    ([{"name": "a", "inputSchema": {"type": "object", "description": "x" * 5000}}], "at most 4096 bytes"),
])
async def test_bad_client_tool_declarations_are_refused_and_nothing_is_stored(scripted_model, connect, declared, says):
    _user, client, room_id = await room_with_client(connect)
    await ask(client, room_id, "hi", body={"clientTools": declared}, ref="s1")
    error = (await client.receive_until("error"))[-1]
    assert error["code"] == "bad_request" and error["ref"] == "s1" and says in error["message"]
    assert await database_sync_to_async(Message.objects.count)() == 0
    assert scripted_model.requests == []


# -- server tools: preliminary results, data parts, body ---------------------------------------


async def test_a_generator_tool_streams_preliminary_results_and_its_last_value_is_the_output(
        scripted_model, connect, extra_tools):
    progress_seen = asyncio.Event()

    @extra_tools.tool("Count to three slowly.")
    async def count_slowly(context: tools.ToolContext):
        for step in (1, 2):
            yield {"done": step, "of": 3}
        progress_seen.set()
        yield {"done": 3, "of": 3, "finished": True}

    _user, client, room_id = await room_with_client(connect)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("count_slowly", "{}")]), ScriptedReply(tokens=["Counted."]))
    await ask(client, room_id, "count")
    frames = await client.receive_until("stream.done")
    outputs = chunks_of(frames, "tool-output-available")
    assert [(o["output"]["done"], o.get("preliminary")) for o in outputs] == [(1, True), (2, True), (3, True), (3, None)]
    part = tool_part(frames[-1]["message"], "count_slowly")
    assert part["output"] == {"done": 3, "of": 3, "finished": True} and "preliminary" not in part
    tool_result = [m for m in scripted_model.requests[1]["messages"] if m["role"] == "tool"][-1]
    assert json.loads(tool_result["content"]) == {"done": 3, "of": 3, "finished": True}
    assert progress_seen.is_set()


async def test_data_parts_reconcile_append_and_transient_and_the_body_reaches_tools(scripted_model, connect, extra_tools):
    @extra_tools.tool("Report the weather in stages.")
    def weather(context: tools.ToolContext) -> dict[str, str]:
        city = context.body.get("city", "nowhere")
        context.data("weather", {"city": city, "status": "loading"}, id="w1")
        context.data("log", {"line": "looked it up"})
        context.data("progress", {"percent": 50}, transient=True)
        context.data("weather", {"city": city, "status": "sunny"}, id="w1")
        context.data("log", {"line": "done"})
        return {"city": city, "sky": "sunny"}

    user, client, room_id = await room_with_client(connect)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("weather", "{}")]), ScriptedReply(tokens=["Sunny."]))
    await ask(client, room_id, "weather?", body={"city": "Lyon"})
    frames = await client.receive_until("stream.done")
    transient = [f for f in frames if f["type"] == "stream.data"]
    assert [f["chunk"] for f in transient] == [{"type": "data-progress", "data": {"percent": 50}, "transient": True}]
    message = frames[-1]["message"]
    data_parts = [p for p in message["parts"] if p["type"].startswith("data-") and p["type"] != "data-usage"]
    assert data_parts == [
        {"type": "data-weather", "id": "w1", "data": {"city": "Lyon", "status": "sunny"}},
        {"type": "data-log", "data": {"line": "looked it up"}},
        {"type": "data-log", "data": {"line": "done"}},
    ]
    assert tool_part(message, "weather")["output"] == {"city": "Lyon", "sky": "sunny"}
    stream_id = frames[-1]["streamId"]
    assert all(c["type"] != "data-progress" for c in await stored_chunks(stream_id))
    # Usage from the model, summed over both steps and updated in place: one part.
    usage = [p for p in message["parts"] if p["type"] == "data-usage"]
    assert usage == [{"type": "data-usage", "id": "usage", "data": {
        "model": "openai/scripted", "inputTokens": 20, "outputTokens": 1, "totalTokens": 21}}]
    # A later viewer gets the stored parts and no transient part.
    late = await connect(user)
    await late.send({"type": "room.join", "roomId": room_id})
    joined = (await late.receive_until("messages"))[-1]
    assert joined["messages"][-1]["parts"] == message["parts"]


# -- limits ------------------------------------------------------------------------------------


async def test_an_oversized_tool_output_is_compacted_in_the_message_but_the_model_sees_it(
        scripted_model, connect, extra_tools, settings):
    settings.MESSAGE_MAX_BYTES = 8192

    @extra_tools.tool("Return a big report.")
    def big_report() -> dict[str, str]:
        return {"report": "x" * 12000}

    _user, client, room_id = await room_with_client(connect)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("big_report", "{}")]), ScriptedReply(tokens=["Read it."]))
    await ask(client, room_id, "report")
    frames = await client.receive_until("stream.done")
    output = tool_part(frames[-1]["message"], "big_report")["output"]
    assert output["compacted"] is True and output["originalBytes"] > 12000
    assert chunks_of(frames, "tool-output-available")[0]["output"] == output
    tool_result = [m for m in scripted_model.requests[1]["messages"] if m["role"] == "tool"][-1]
    assert json.loads(tool_result["content"]) == {"report": "x" * 12000}
    stored = await database_sync_to_async(Message.objects.get)(pk=int(frames[-1]["message"]["id"]))
    assert len(json.dumps(stored.parts)) + len(stored.content) <= 8192


async def test_an_answer_that_outgrows_message_max_bytes_is_cut_with_a_note(scripted_model, connect, settings):
    settings.MESSAGE_MAX_BYTES = 4096
    _user, client, room_id = await room_with_client(connect)
    scripted_model.enqueue(ScriptedReply(tokens=["word " * 50] * 40, hold_open=True))
    await ask(client, room_id, "talk a lot")
    frames = await client.receive_until("stream.done")
    done = frames[-1]
    deltas = "".join(c["delta"] for c in chunks_of(frames, "text-delta"))
    assert done["status"] == "complete" and done["message"]["content"] == deltas
    assert 1000 < len(deltas) < 2048  # stored twice: in its part and as `content`
    assert chunks_of(frames, "finish")[0]["finishReason"] == "length"
    notes = [p for p in done["message"]["parts"] if p["type"] == "data-notice"]
    assert "4096 bytes" in notes[0]["data"]["text"]
    stored = await database_sync_to_async(Message.objects.get)(pk=int(done["message"]["id"]))
    assert len(json.dumps(stored.parts)) + len(stored.content) <= 4096
    assert scripted_model.client_disconnected.wait(2)  # the model was told to stop


async def test_the_conversation_sent_to_the_model_fits_llm_context_tokens(scripted_model, connect, settings):
    _user, client, room_id = await room_with_client(connect)
    for number in range(4):
        scripted_model.enqueue(ScriptedReply(tokens=[f"Answer {number} " + "filler " * 60]))
        await client.send({"type": "chat.send", "roomId": room_id, "requestId": f"q{number}",
                           "text": f"Question {number} " + "padding " * 60})
        await client.receive_until("stream.done")
    everything = scripted_model.requests[-1]["messages"]
    assert [m["role"] for m in everything] == ["system"] + ["user", "assistant"] * 3 + ["user"]

    settings.LLM_CONTEXT_TOKENS = 300
    scripted_model.enqueue(ScriptedReply(tokens=["Short."]))
    await client.send({"type": "chat.send", "roomId": room_id, "requestId": "q9", "text": "Newest question"})
    await client.receive_until("stream.done")
    fitted = scripted_model.requests[-1]["messages"]
    assert fitted[0] == everything[0]  # the system prompt always goes
    assert fitted[-1] == {"role": "user", "content": "Newest question"}
    assert len(fitted) < len(everything) + 2  # older turns were left out...
    assert not any("Question 0" in str(m["content"]) for m in fitted)  # ...oldest first
    stored = await database_sync_to_async(Message.objects.filter(room_id=room_id).count)()
    assert stored == 10  # nothing stored changed


# -- tools from MCP servers --------------------------------------------------------------------


@pytest.fixture
async def mcp_settings(settings):
    """MCP_SERVERS: the test server over stdio, and one whose command does not exist."""
    from chatrooms.mcp_servers import mcp_close_all
    from tests.chatrooms.test_mcp_servers import stdio_server

    settings.MCP_SERVERS = [
        {**stdio_server("calc"), "env": {}},
        {"name": "gone", "command": "/nonexistent/mcp-server", "args": [], "env": {}},
    ]
    settings.MCP_WAIT_SECONDS = 20
    yield settings
    await mcp_close_all()


async def test_a_tool_of_an_mcp_server_is_offered_and_called_and_a_down_server_is_skipped(
        scripted_model, connect, mcp_settings, caplog):
    _user, client, room_id = await room_with_client(connect)
    scripted_model.enqueue(ScriptedReply(tool_calls=[("calc__add", '{"a": 2, "b": 3}'), ("calc__fail", '{"reason": "no"}')]),
                           ScriptedReply(tokens=["Five."]))
    await ask(client, room_id, "add 2 and 3")
    frames = await client.receive_until("stream.done", timeout=40)
    offered = {t["function"]["name"] for t in scripted_model.requests[0]["tools"]}
    assert {"calc__add", "calc__shout", "roll_dice"} <= offered
    assert not any(name.startswith("gone__") for name in offered)
    assert "gone" in caplog.text  # the server that is down was logged, and the answer went on
    assert chunks_of(frames, "tool-output-available")[0]["output"] == {"result": 5}
    assert "no" in chunks_of(frames, "tool-output-error")[0]["errorText"]
    done = frames[-1]
    assert done["status"] == "complete" and done["message"]["content"] == "Five."
    assert tool_part(done["message"], "calc__add")["state"] == "output-available"


async def test_a_cancelled_answer_whose_worker_is_slow_to_stop_ends_aborted_not_interrupted(
        scripted_model, connect, extra_tools, settings):
    """A worker that takes longer than two heartbeats to stop (a tool that cleans up slowly when
    cancelled) goes on beating: the cancel's look for a lost worker leaves it alone, and the answer
    ends as `aborted`, with everything it streamed."""
    settings.STREAM_HEARTBEAT_SECONDS = 0.2  # a lost worker: no beat for orphan_seconds() = 1.4 s
    started, cleaned_up = asyncio.Event(), asyncio.Event()

    @extra_tools.tool("Take a long time, and as long again to clean up when stopped.")
    async def slow_tool() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await cleaned_up.wait()
            raise
        return "never"

    _user, client, _room_id = await room_with_client(connect)
    scripted_model.enqueue(ScriptedReply(tokens=["Working."], tool_calls=[("slow_tool", "{}")]))
    await client.send({"type": "chat.send", "requestId": "q", "text": "go"})
    await asyncio.wait_for(started.wait(), 20)
    await client.send({"type": "chat.cancel", "requestId": "q", "ref": "c"})
    await client.receive_until("ack", ref="c")
    [look] = list(recovery._after_cancel.values())
    await look  # both looks done: at once, and orphan_seconds() later, while the tool still cleans up
    cleaned_up.set()
    done = (await client.receive_until("stream.done", requestId="q"))[-1]
    assert done["status"] == "aborted", done
    stored = await database_sync_to_async(Message.objects.get)(pk=done["message"]["id"])
    assert stored.status == "aborted" and stored.content == "Working."
