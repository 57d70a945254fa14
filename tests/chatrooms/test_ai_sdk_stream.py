"""Our streams read by the AI SDK itself: `ai`'s readUIMessageStream builds the message we stored."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from channels.db import database_sync_to_async

from chatrooms import tools
from chatrooms.models import Message
from chatrooms.scripted_model_server import ScriptedReply
from streaming.models import StreamChunk
from tests.chatrooms.test_chat_flow import joined_room
from tests.conftest import require_service
from tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)
AISDK = Path(__file__).resolve().parent.parent / "aisdk"


def read_with_ai_sdk(chunks: list[dict]) -> dict:
    node = shutil.which("node")
    require_service("Node.js", node is not None, "install nodejs to check streams against the AI SDK")
    require_service("the `ai` npm package", (AISDK / "node_modules" / "ai").is_dir(),
                    "run `npm ci --prefix tests/aisdk` (scripts/test does it when npm is there)")
    result = subprocess.run([node, str(AISDK / "read_stream.mjs")], input=json.dumps(chunks), text=True,
                            capture_output=True, timeout=60, check=True)
    return json.loads(result.stdout)


def comparable(parts: list[dict]) -> list[dict]:
    """Parts without the SDK's display-only `state` of text and reasoning parts."""
    return [{k: v for k, v in p.items() if not (k == "state" and p["type"] in ("text", "reasoning"))}
            for p in parts]


SCENARIOS = {
    "text": [ScriptedReply(tokens=["Hello", " there"])],
    "reasoning": [ScriptedReply(reasoning=["Let me ", "think."], tokens=["Done."])],
    "tools": [ScriptedReply(tokens=["Rolling."], tool_calls=[("roll_dice", '{"sides": 8}'), ("nope", "{}")]),
              ScriptedReply(tokens=["Rolled."])],
    "model-error": [ScriptedReply(tokens=["Half", " of", " it"], fail_after=2)],
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_the_ai_sdk_reads_our_stream_into_the_stored_message(scripted_model, connect, scenario):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(*SCENARIOS[scenario])
    await client.send({"type": "chat.send", "requestId": "q", "text": "go"})
    done = (await client.receive_until("stream.done"))[-1]
    await check_against_ai_sdk(done)


async def test_the_ai_sdk_reads_an_aborted_stream(scripted_model, connect):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(ScriptedReply(tokens=["Stop", " me"], hold_open=True))
    await client.send({"type": "chat.send", "requestId": "q", "text": "go"})
    shown = ""
    while shown != "Stop me":  # the two tokens may come as one coalesced delta
        shown += (await client.receive()).get("chunk", {}).get("delta", "")
    await client.send({"type": "chat.cancel", "requestId": "q"})
    done = (await client.receive_until("stream.done"))[-1]
    assert done["status"] == "aborted"
    await check_against_ai_sdk(done)


async def check_against_ai_sdk(done: dict) -> None:
    bodies = await database_sync_to_async(list)(
        StreamChunk.objects.filter(stream_id=done["streamId"]).order_by("index").values_list("body", flat=True))
    chunks = [json.loads(body) for body in bodies]
    result = await database_sync_to_async(read_with_ai_sdk)(chunks)
    stored = await database_sync_to_async(Message.objects.get)(pk=int(done["message"]["id"]))
    expected_errors = [c["errorText"] for c in chunks if c["type"] == "error"]
    assert [e.split(": ", 1)[-1] for e in result["errors"]] == expected_errors
    assert result["message"]["id"] == str(stored.pk)
    assert comparable(result["message"]["parts"]) == stored.parts


@pytest.fixture
def progress_tool():
    """A server tool with preliminary results and data parts, through the public registry."""
    before = dict(tools.REGISTRY)

    @tools.tool("Work in stages.")
    async def staged(context: tools.ToolContext):
        context.data("status", {"stage": 1}, id="s")
        yield {"stage": 1}
        context.data("status", {"stage": 2}, id="s")
        context.data("log", "appended")
        context.data("ping", "live only", transient=True)
        yield {"stage": 2, "done": True}

    yield
    tools.REGISTRY.clear()
    tools.REGISTRY.update(before)


@pytest.mark.parametrize("answer", ["approve", "deny", "client-result", "cancel-while-waiting", "preliminary"])
async def test_the_ai_sdk_reads_streams_that_wait_for_a_person(scripted_model, connect, progress_tool, answer):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    call = {"client-result": ("get_local_time", "{}"), "cancel-while-waiting": ("get_local_time", "{}"),
            "preliminary": ("staged", "{}")}.get(answer, ("rename_room", '{"name": "New"}'))
    scripted_model.enqueue(ScriptedReply(tool_calls=[call]), ScriptedReply(tokens=["After."]))
    await client.send({"type": "chat.send", "requestId": "q", "text": "go"})
    if answer != "preliminary":
        frames = await client.receive_until("message.updated")
        call_id = next(f["chunk"]["toolCallId"] for f in frames
                       if f["type"] == "stream.chunk" and f["chunk"]["type"] == "tool-input-available")
        if answer in ("approve", "deny"):
            await client.send({"type": "tool.approval", "requestId": "q", "toolCallId": call_id,
                               "approved": answer == "approve"})
        elif answer == "client-result":
            await client.send({"type": "tool.result", "requestId": "q", "toolCallId": call_id, "output": {"ok": 1}})
        else:
            await client.send({"type": "chat.cancel", "requestId": "q"})
    done = (await client.receive_until("stream.done"))[-1]
    await check_against_ai_sdk(done)
