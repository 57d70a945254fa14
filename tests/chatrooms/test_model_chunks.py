"""How a reply reads the model's stream: an OpenAI-compatible server's chunks past litellm's wrapper, and the same answer either way."""
from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async

from chatrooms.assistant import _estimated_usage, _usage_of, model_chunks, reasoning_of
from chatrooms.llm import get_litellm, provider_options
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


async def test_the_estimate_for_a_server_that_reports_no_usage_is_litellms(scripted_model):
    wrapped = await read_reply(scripted_model, ScriptedReply(tokens=["Hello", " there", " friend"], usage=False),
                               wrapped=True)
    direct = await read_reply(scripted_model, ScriptedReply(tokens=["Hello", " there", " friend"], usage=False),
                              wrapped=False)
    assert direct["usage"] is None  # the server said nothing: the app estimates, as the wrapper did
    prompt, completion, _total = wrapped["usage"]
    estimate = _estimated_usage("openai/scripted", [{"role": "user", "content": "go"}], direct["text"])
    assert estimate.completion_tokens == completion == 3
    assert prompt <= estimate.prompt_tokens <= prompt + 3  # counted message by message: a little high


async def ask(scripted_model, connect, *replies: ScriptedReply) -> list[dict[str, Any]]:
    """The frames of one answer, up to its stream.done."""
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    await joined_room(client)
    scripted_model.enqueue(*replies)
    await client.send({"type": "chat.send", "requestId": "q", "text": "Say hello in a few words"})
    return await client.receive_until("stream.done")


def finish_reason_of(frames: list[dict[str, Any]]) -> str:
    return next(f["chunk"]["finishReason"] for f in frames
                if f["type"] == "stream.chunk" and f["chunk"]["type"] == "finish")


def texts_of(done: dict[str, Any]) -> list[str]:
    return [p["text"] for p in done["message"]["parts"] if p["type"] == "text"]


async def test_a_server_that_reports_no_usage_gets_litellms_estimate(scripted_model, connect):
    done = (await ask(scripted_model, connect, ScriptedReply(tokens=["Hello", " there", " friend"], usage=False)))[-1]
    assert done["status"] == "complete"
    usage = next(p for p in done["message"]["parts"] if p["type"] == "data-usage")["data"]
    assert usage["model"] == "openai/scripted"
    assert usage["inputTokens"] > 5  # the system prompt and the question, counted offline
    assert usage["outputTokens"] == 3  # "Hello there friend"
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]


async def test_the_estimate_counts_a_steps_tool_calls_too(scripted_model, connect):
    done = (await ask(scripted_model, connect,
                      ScriptedReply(tool_calls=[("roll_dice", '{"sides": 20}')], usage=False),
                      ScriptedReply(tokens=["Rolled."], usage=False)))[-1]
    usage = next(p for p in done["message"]["parts"] if p["type"] == "data-usage")["data"]
    assert usage["outputTokens"] >= 2 + 6  # "Rolled." and `roll_dice{"sides": 20}`, not the text alone


async def test_a_server_that_drops_the_connection_after_its_last_chunk_still_answers(scripted_model, connect):
    frames = await ask(scripted_model, connect, ScriptedReply(tokens=["All", " said."], drop_after_finish=True))
    assert frames[-1]["status"] == "complete"
    assert texts_of(frames[-1]) == ["All said."]
    assert finish_reason_of(frames) == "stop"


async def test_a_server_that_drops_the_connection_mid_answer_fails_it_and_keeps_the_text(scripted_model, connect):
    done = (await ask(scripted_model, connect, ScriptedReply(tokens=["Half", " of", " it"], fail_after=2)))[-1]
    assert done["status"] == "error"
    assert texts_of(done) == ["Half of"]


async def test_a_bare_finish_chunk_under_another_name_ends_the_answer(scripted_model, connect):
    """A finish chunk with no delta at all, and a finish reason some servers use for "stop"."""
    frames = await ask(scripted_model, connect, ScriptedReply(
        tokens=["Short", " answer."], raw_choices=[{"index": 0, "finish_reason": "eos"}]))
    assert frames[-1]["status"] == "complete"
    assert texts_of(frames[-1]) == ["Short answer."]
    assert finish_reason_of(frames) == "stop"


async def test_a_stream_the_server_ends_with_finish_reason_error_fails(scripted_model, connect):
    frames = await ask(scripted_model, connect, ScriptedReply(
        tokens=["Partial"], raw_choices=[{"index": 0, "delta": {}, "finish_reason": "error"}]))
    done = frames[-1]
    assert done["status"] == "error"
    assert texts_of(done) == ["Partial"]
    errors = [f["chunk"]["errorText"] for f in frames if f["type"] == "stream.chunk" and f["chunk"]["type"] == "error"]
    assert errors == ["The model stopped with an error before finishing its answer."]


async def test_tool_calls_sent_without_an_index_stay_apart(scripted_model, connect):
    calls = [{"id": f"call_{sides}", "type": "function",
              "function": {"name": "roll_dice", "arguments": f'{{"sides": {sides}}}'}} for sides in (6, 8)]
    frames = await ask(scripted_model, connect, ScriptedReply(raw_choices=[
        {"index": 0, "delta": {"tool_calls": calls}, "finish_reason": None},
        {"index": 0, "delta": {}, "finish_reason": "tool_calls"},
    ]), ScriptedReply(tokens=["Rolled twice."]))
    parts = [p for p in frames[-1]["message"]["parts"] if p["type"] == "tool-roll_dice"]
    assert [(p["toolCallId"], p["input"]) for p in parts] == [("call_6", {"sides": 6}), ("call_8", {"sides": 8})]
    assert all(p["state"] == "output-available" for p in parts)
