"""How a reply reads the model's stream: an OpenAI-compatible server's chunks past litellm's wrapper, and the same answer either way."""
from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async

from chatrooms.assistant import _usage_of, get_litellm, model_chunks, provider_options, reasoning_of
from chatrooms.scripted_model_server import ScriptedReply
from tests.chatrooms.test_chat_flow import joined_room
from tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)


async def read_reply(scripted_model, reply: ScriptedReply, *, wrapped: bool) -> dict[str, Any]:
    """One streamed call through litellm, read through its wrapper or past it, as the app reads it."""
    scripted_model.enqueue(reply)
    response = await get_litellm().acompletion(
        model="openai/scripted", messages=[{"role": "user", "content": "go"}], stream=True,
        stream_options={"include_usage": True}, **provider_options("openai/scripted"))
    chunks, is_wrapped = model_chunks(response)
    assert is_wrapped is False  # an OpenAI-compatible server's chunks are read past the wrapper
    if wrapped:
        chunks = response
    seen: dict[str, Any] = {"reasoning": "", "text": "", "calls": {}, "finish": None, "usage": None}
    async for part in chunks:
        usage = _usage_of(part)
        if usage is not None:
            seen["usage"] = (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
        if not part.choices:
            continue
        choice = part.choices[0]
        seen["reasoning"] += reasoning_of(choice.delta) or ""
        seen["text"] += choice.delta.content or ""
        for call in choice.delta.tool_calls or []:
            entry = seen["calls"].setdefault(call.index, {"id": None, "name": None, "arguments": ""})
            entry["id"] = entry["id"] or call.id
            entry["name"] = entry["name"] or call.function.name
            entry["arguments"] += call.function.arguments or ""
        seen["finish"] = choice.finish_reason or seen["finish"]
    await response.aclose()
    return seen


@pytest.mark.parametrize("reasoning_field", ["reasoning_content", "reasoning"])
async def test_the_chunks_past_litellms_wrapper_say_what_the_wrapped_ones_say(scripted_model, reasoning_field):
    reply = dict(reasoning=["Let me ", "think."], tokens=["Rolling", " now."], reasoning_field=reasoning_field,
                 tool_calls=[("roll_dice", '{"sides": 8}'), ("other", "{}")])
    direct = await read_reply(scripted_model, ScriptedReply(**reply), wrapped=False)
    wrapped = await read_reply(scripted_model, ScriptedReply(**reply), wrapped=True)
    assert direct == wrapped
    assert direct == {
        "reasoning": "Let me think.", "text": "Rolling now.", "finish": "tool_calls", "usage": (10, 2, 12),
        "calls": {0: {"id": "call_0_roll_dice", "name": "roll_dice", "arguments": '{"sides": 8}'},
                  1: {"id": "call_1_other", "name": "other", "arguments": "{}"}},
    }


async def ask(scripted_model, connect, reply: ScriptedReply) -> dict[str, Any]:
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(reply)
    await client.send({"type": "chat.send", "requestId": "q", "text": "Say hello in a few words"})
    return (await client.receive_until("stream.done"))[-1]


async def test_a_server_that_reports_no_usage_gets_litellms_estimate(scripted_model, connect):
    done = await ask(scripted_model, connect, ScriptedReply(tokens=["Hello", " there", " friend"], usage=False))
    assert done["status"] == "complete"
    usage = next(p for p in done["message"]["parts"] if p["type"] == "data-usage")["data"]
    assert usage["model"] == "openai/scripted"
    assert usage["inputTokens"] > 5  # the system prompt and the question, counted offline
    assert usage["outputTokens"] == 3  # "Hello there friend"
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]


async def test_a_server_that_drops_the_connection_after_its_last_chunk_still_answers(scripted_model, connect):
    done = await ask(scripted_model, connect, ScriptedReply(tokens=["All", " said."], drop_after_finish=True))
    assert done["status"] == "complete"
    assert [p["text"] for p in done["message"]["parts"] if p["type"] == "text"] == ["All said."]


async def test_a_server_that_drops_the_connection_mid_answer_fails_it_and_keeps_the_text(scripted_model, connect):
    done = await ask(scripted_model, connect, ScriptedReply(tokens=["Half", " of", " it"], fail_after=2))
    assert done["status"] == "error"
    assert [p["text"] for p in done["message"]["parts"] if p["type"] == "text"] == ["Half of"]
