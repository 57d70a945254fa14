"""End-to-end flows over the socket: a room, a message, a streamed and stored answer."""
from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async

from chatrooms.models import Message
from chatrooms.scripted_model_server import ScriptedReply
from streaming.models import Stream, StreamChunk
from tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)


def text_of(frames: list[dict]) -> str:
    return "".join(f["chunk"]["delta"] for f in frames
                   if f["type"] == "stream.chunk" and f["chunk"]["type"] == "text-delta")


async def test_send_streams_an_answer_that_is_stored(scripted_model, connect):
    user = await sync_to_async(make_user)()
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
    assert done["message"]["parts"] == [{"type": "step-start"}, {"type": "text", "text": "Hello, world!"}]

    stored = await sync_to_async(Message.objects.get)(pk=int(done["message"]["id"]))
    assert stored.status == "complete" and stored.content == "Hello, world!"
    stream = await sync_to_async(Stream.objects.get)(pk=start["streamId"])
    assert stream.status == "complete"
    bodies = await sync_to_async(list)(StreamChunk.objects.filter(stream=stream).order_by("index").values_list("index", "body"))
    assert [json.loads(b) for _, b in bodies] == [c["chunk"] for c in chunks]

    rooms = await client.receive_until("rooms")
    assert rooms[-1]["rooms"][0]["messageCount"] == 2 and rooms[-1]["rooms"][0]["streaming"] is False
    # The model saw the system prompt and the user's message.
    sent = scripted_model.requests[-1]["messages"]
    assert sent[0]["role"] == "system" and sent[-1] == {"role": "user", "content": "Hi there"}
