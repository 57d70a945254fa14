"""End-to-end flows over the socket: a room, a message, a streamed and stored answer."""
from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async

from chatrooms.models import Message
from chatrooms.scripted_model_server import ScriptedReply
from streaming.models import Stream, StreamChunk
from tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)


def text_of(frames: list[dict]) -> str:
    return "".join(f["chunk"]["delta"] for f in frames
                   if f["type"] == "stream.chunk" and f["chunk"]["type"] == "text-delta")


async def test_a_nul_character_from_the_model_is_stored_as_a_replacement_character(scripted_model, connect):
    """PostgreSQL stores no U+0000 in text or JSON: the answer must still be stored, on every database."""
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(ScriptedReply(tokens=["a\x00b"]))
    await client.send({"type": "chat.send", "requestId": "q", "text": "go"})
    done = (await client.receive_until("stream.done"))[-1]
    assert done["status"] == "complete" and done["message"]["content"] == "a\ufffdb"
    stored = await database_sync_to_async(Message.objects.get)(pk=int(done["message"]["id"]))
    assert stored.content == "a\ufffdb"


async def test_send_streams_an_answer_that_is_stored(scripted_model, connect):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    assert [m["id"] for m in client.hello["models"]] == ["openai/scripted", "openai/other"]
    await client.send({"type": "room.create", "name": "  Plans  ", "ref": "r1"})
    created = (await client.receive_until("room.created"))[-1]
    assert created["ref"] == "r1" and created["room"]["name"] == "Plans"
    room_id = created["room"]["id"]
    scripted_model.enqueue(ScriptedReply(tokens=["Hello", ",", " world", "!"]))

    await client.send({"type": "chat.send", "roomId": room_id, "requestId": "q1", "text": "Hi there"})
    frames = await client.receive_until("stream.done")

    types = [f["type"] for f in frames]
    assert types.index("messages") < types.index("message.created") < types.index("stream.start")
    start = frames[types.index("stream.start")]
    assert start["requestId"] == "q1"
    chunks = [f for f in frames if f["type"] == "stream.chunk"]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert chunks[0]["chunk"] == {"type": "start", "messageId": frames[-1]["message"]["id"]}
    assert [c["chunk"]["type"] for c in chunks][-2:] == ["finish-step", "finish"]
    done = frames[-1]
    assert done["status"] == "complete" and done["streamId"] == start["streamId"]
    assert done["message"]["content"] == text_of(frames) == "Hello, world!"
    assert done["message"]["parts"] == [
        {"type": "step-start"}, {"type": "text", "text": "Hello, world!"},
        {"type": "data-usage", "id": "usage",
         "data": {"model": "openai/scripted", "inputTokens": 10, "outputTokens": 4, "totalTokens": 14}},
    ]

    stored = await database_sync_to_async(Message.objects.get)(pk=int(done["message"]["id"]))
    assert stored.status == "complete" and stored.content == "Hello, world!"
    stream = await database_sync_to_async(Stream.objects.get)(pk=start["streamId"])
    assert stream.status == "complete"
    bodies = await database_sync_to_async(list)(StreamChunk.objects.filter(stream=stream).order_by("index").values_list("index", "body"))
    assert [json.loads(b) for _, b in bodies] == [c["chunk"] for c in chunks]

    rooms = await client.receive_until("rooms")
    assert rooms[-1]["rooms"][0]["messageCount"] == 2 and rooms[-1]["rooms"][0]["streaming"] is False
    # The model saw the system prompt and the user's message.
    sent = scripted_model.requests[-1]["messages"]
    assert sent[0]["role"] == "system" and sent[-1] == {"role": "user", "content": "Hi there"}


async def start_room(client, name: str = "Room") -> str:
    await client.send({"type": "room.create", "name": name})
    return (await client.receive_until("room.created"))[-1]["room"]["id"]


async def joined_room(client, name: str = "Room") -> str:
    room_id = await start_room(client, name)
    await client.send({"type": "room.join", "roomId": room_id})
    await client.receive_until("messages")
    return room_id


async def test_tool_calls_run_between_model_steps(scripted_model, connect):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(
        ScriptedReply(tokens=["Rolling."], tool_calls=[("roll_dice", '{"sides": 20}')]),
        ScriptedReply(tokens=["You", " got", " it."]),
    )
    await client.send({"type": "chat.send", "requestId": "q1", "text": "roll a d20"})
    frames = await client.receive_until("stream.done")
    chunks = [f["chunk"] for f in frames if f["type"] == "stream.chunk"]
    kinds = [c["type"] for c in chunks]
    assert kinds[:2] == ["start", "start-step"]
    assert kinds.index("tool-input-start") < kinds.index("tool-input-delta") < kinds.index("tool-input-available")
    assert kinds.index("tool-input-available") < kinds.index("tool-output-available") < kinds.index("finish-step")
    assert kinds.count("start-step") == 2 and kinds.count("finish-step") == 2 and kinds[-1] == "finish"
    available = next(c for c in chunks if c["type"] == "tool-input-available")
    assert available["toolName"] == "roll_dice" and available["input"] == {"sides": 20}
    output = next(c for c in chunks if c["type"] == "tool-output-available")["output"]
    assert output["sides"] == 20 and 1 <= output["result"] <= 20

    message = frames[-1]["message"]
    assert message["content"] == "Rolling.You got it." == text_of(frames)
    tool_part = next(p for p in message["parts"] if p["type"] == "tool-roll_dice")
    assert tool_part["state"] == "output-available" and tool_part["output"] == output
    # The second model step saw the tool call and its result.
    second = scripted_model.requests[1]["messages"]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "roll_dice"
    assert second[-1]["role"] == "tool" and json.loads(second[-1]["content"]) == output


async def test_a_failing_tool_ends_in_an_error_the_model_sees(scripted_model, connect):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(
        ScriptedReply(tool_calls=[("roll_dice", '{"sides": 1}'), ("no_such_tool", "{}")]),
        ScriptedReply(tokens=["Sorry."]),
    )
    await client.send({"type": "chat.send", "requestId": "q1", "text": "roll"})
    frames = await client.receive_until("stream.done")
    errors = [f["chunk"] for f in frames if f["type"] == "stream.chunk" and f["chunk"]["type"] == "tool-output-error"]
    assert [e["errorText"] for e in errors] == ["sides must be between 2 and 1000", "there is no tool named 'no_such_tool'"]
    assert frames[-1]["status"] == "complete"
    tool_results = [m for m in scripted_model.requests[1]["messages"] if m["role"] == "tool"]
    assert [json.loads(m["content"]) for m in tool_results] == [{"error": e["errorText"]} for e in errors]


async def test_the_tool_loop_stops_after_llm_max_steps(scripted_model, connect, settings):
    settings.LLM_MAX_STEPS = 2
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(*[ScriptedReply(tool_calls=[("get_current_time", "{}")]) for _ in range(3)])
    await client.send({"type": "chat.send", "requestId": "q1", "text": "time?"})
    frames = await client.receive_until("stream.done")
    assert len(scripted_model.requests) == 2
    assert frames[-1]["status"] == "complete"
    assert [f["chunk"] for f in frames if f["type"] == "stream.chunk"][-1] == {"type": "finish", "finishReason": "tool-calls"}


async def test_cancel_closes_the_model_request_and_keeps_what_streamed(scripted_model, connect):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(ScriptedReply(tokens=["one", " two", " three"], hold_open=True))
    await client.send({"type": "chat.send", "requestId": "q1", "text": "talk"})
    streamed = []
    while text_of(streamed) != "one two three":
        streamed.append(await client.receive())
    await client.send({"type": "chat.cancel", "requestId": "q1", "ref": "c"})
    frames = await client.receive_until("stream.done")
    assert {"type": "ack", "ref": "c"} in frames
    done = frames[-1]
    assert done["status"] == "aborted"
    assert done["message"]["content"] == text_of(streamed + frames) == "one two three"
    assert [f["chunk"]["type"] for f in frames if f["type"] == "stream.chunk"][-2:] == ["text-end", "abort"]
    # The model server saw its connection close.
    assert await database_sync_to_async(scripted_model.client_disconnected.wait)(1.0)
    stored = await database_sync_to_async(Message.objects.get)(pk=int(done["message"]["id"]))
    assert (stored.status, stored.content) == ("aborted", "one two three")


@pytest.mark.parametrize("reply", [ScriptedReply(tokens=["Par", "tial", "x", "y"], fail_after=2),
                                   ScriptedReply(status=500)], ids=["mid-stream", "at-start"])
async def test_a_failing_model_gives_model_error_and_keeps_what_streamed(scripted_model, connect, reply):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(reply)
    await client.send({"type": "chat.send", "requestId": "q1", "text": "hello"})
    frames = await client.receive_until("stream.done")
    error = next(f for f in frames if f["type"] == "error")
    assert error["code"] == "model_error" and error["requestId"] == "q1"
    done = frames[-1]
    assert done["status"] == "error"
    expected = "Partial" if reply.fail_after else ""
    assert done["message"]["content"] == text_of(frames) == expected
    assert [f["chunk"]["type"] for f in frames if f["type"] == "stream.chunk"][-1] == "error"
    stored = await database_sync_to_async(Message.objects.get)(pk=int(done["message"]["id"]))
    assert (stored.status, stored.content) == ("error", expected)


async def test_closing_the_socket_does_not_stop_the_answer(scripted_model, connect):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    room_id = await joined_room(client)
    scripted_model.enqueue(ScriptedReply(tokens=["a", "b", "c", "d"], delay=0.05))
    await client.send({"type": "chat.send", "requestId": "q1", "text": "go"})
    await client.receive_until("stream.chunk")
    await client.close()
    other = await connect(user)
    await other.send({"type": "room.join", "roomId": room_id})
    frames = await other.receive_until("stream.done")
    assert frames[-1]["status"] == "complete" and frames[-1]["message"]["content"] == "abcd"


async def test_cancel_holds_when_the_cancel_message_is_lost(scripted_model, connect):
    """Only the database flag is set, as if the channel-layer message never arrived."""
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(ScriptedReply(tokens=[f"{i} " for i in range(500)], delay=0.01))
    await client.send({"type": "chat.send", "requestId": "q1", "text": "count"})
    start = (await client.receive_until("stream.start"))[-1]
    await client.receive_until("stream.chunk", timeout=10)
    while not (await client.receive())["chunk"]["type"] == "text-delta":
        pass
    await database_sync_to_async(Stream.objects.filter(pk=start["streamId"]).update)(cancel_requested=True)
    frames = await client.receive_until("stream.done")
    assert frames[-1]["status"] == "aborted"
    assert len(frames[-1]["message"]["content"].split()) < 500
    assert await database_sync_to_async(scripted_model.client_disconnected.wait)(1.0)
