"""The built-in offline model (`local/demo`): a litellm custom provider that answers without any network."""
from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.conf import settings
from litellm import CustomLLM
from litellm.types.utils import GenericStreamingChunk, ModelResponse

PROVIDER = "local"

INTRODUCTION = """I'm the **built-in demo model** of Chatrooms. I run inside the server, need no network \
and no API key, and stream my answer word by word so you can watch it arrive.

You asked: "{question}"

I can't really think, but I can show what the app does:

- Ask me to **roll a d20** (or any die) and I'll call the `roll_dice` tool.
- Ask me **what time it is** and I'll call the `get_current_time` tool, or for **my local time** and \
your browser answers through the `get_local_time` tool.
- Ask me to **rename this room to** something and I'll ask you to approve the `rename_room` tool.
- Close the tab while I talk and come back: the answer picks up where it left off.

To talk to a real model, set `LLM_MODEL` and `LLM_API_BASE` (and `LLM_API_KEY` if it needs one) \
to any OpenAI-compatible server, for example:

```
LLM_MODEL=openai/llama3.2 LLM_API_BASE=http://127.0.0.1:11434/v1
```
"""


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def plan_reply(messages: list[dict[str, Any]], tool_names: set[str]) -> tuple[str, dict[str, Any] | None]:
    """(text, tool call or None) for the conversation so far. Deterministic, so tests can rely on it."""
    last = messages[-1] if messages else {"role": "user", "content": ""}
    if last.get("role") == "tool":
        return _describe_tool_result(last), None
    question = _text_of(last).strip()
    lowered = question.lower()
    dice = re.search(r"\bd(\d{1,4})\b", lowered)
    if "roll_dice" in tool_names and (dice or "roll" in lowered or "dice" in lowered or "die" in lowered.split()):
        sides = int(dice.group(1)) if dice else 6
        return "", {"name": "roll_dice", "arguments": {"sides": sides}}
    rename = re.search(r"\brename (?:this|the) room to\s+[\"']?(.+?)[\"']?\s*$", question, re.IGNORECASE)
    if "rename_room" in tool_names and rename:
        return "", {"name": "rename_room", "arguments": {"name": rename.group(1)[:100]}}
    if "get_local_time" in tool_names and re.search(r"\b(my|local) time\b", lowered):
        return "", {"name": "get_local_time", "arguments": {}}
    if "get_current_time" in tool_names and re.search(r"\b(time|date|day is it|what day)\b", lowered):
        return "", {"name": "get_current_time", "arguments": {}}
    return INTRODUCTION.format(question=question[:200].replace('"', "'")), None


def _describe_tool_result(message: dict[str, Any]) -> str:
    try:
        result = json.loads(_text_of(message))
    except ValueError:
        result = None
    if isinstance(result, dict) and "result" in result and "sides" in result:
        return f"🎲 You rolled a **{result['result']}** on a d{result['sides']}."
    if isinstance(result, dict) and "utc" in result:
        return f"It is **{result['utc']}** (UTC), a {result.get('weekday', 'day')}."
    if isinstance(result, dict) and result.get("renamed"):
        return f"Done: this room is now called **{result['name']}**."
    if isinstance(result, dict) and "localTime" in result:
        return f"Your browser says it is **{result['localTime']}** ({result.get('timeZone', 'local time')})."
    if isinstance(result, dict) and "denied" in result:
        return "All right, I won't do that."
    if isinstance(result, dict) and "error" in result:
        return f"The tool failed: {result['error']}"
    return f"The tool answered: `{_text_of(message)[:500]}`"


def _words(text: str) -> Iterator[str]:
    yield from re.findall(r"\S+\s*|\s+", text)


def _chunk(text: str = "", *, finished: bool = False, reason: str = "", tool_use: Any = None,
           usage: Any = None) -> GenericStreamingChunk:
    return {
        "text": text,
        "tool_use": tool_use,
        "is_finished": finished,
        "finish_reason": reason,
        "usage": usage,
        "index": 0,
    }


def _word_count(messages: list[dict[str, Any]]) -> int:
    return sum(len(_text_of(message).split()) + 4 for message in messages)


class LocalDemoModel(CustomLLM):
    """Streams `plan_reply`'s answer at LOCAL_MODEL_DELAY_MS per word, or one tool call."""

    async def astreaming(self, *args: Any, **kwargs: Any) -> AsyncIterator[GenericStreamingChunk]:  # type: ignore[override]
        messages = kwargs.get("messages") or []
        tools = (kwargs.get("optional_params") or {}).get("tools") or []
        tool_names = {t.get("function", {}).get("name") for t in tools}
        text, call = plan_reply(messages, tool_names)
        delay = settings.LOCAL_MODEL_DELAY_MS / 1000
        for word in _words(text):
            if delay:
                await asyncio.sleep(delay)
            yield _chunk(word)
        if call:
            await asyncio.sleep(delay)
            yield _chunk(tool_use={
                "id": f"call_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
                "index": 0,
            })
        # Words stand in for tokens: this model has no tokenizer, and the counts only need to be plausible.
        prompt, completion = _word_count(messages), len(text.split()) + (10 if call else 0)
        yield _chunk(finished=True, reason="tool_calls" if call else "stop", usage={
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:  # type: ignore[override]
        messages = kwargs.get("messages") or []
        text, _ = plan_reply(messages, set())
        response: ModelResponse = kwargs["model_response"]
        response.choices[0].message.content = text  # type: ignore[union-attr]
        return response
