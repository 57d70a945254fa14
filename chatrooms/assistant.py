"""One reply: room history -> litellm -> protocol chunks, with the tool loop and cancel, run by the worker."""
from __future__ import annotations

import asyncio
import copy
import itertools
import json
import logging
import re
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError

from streaming.recorder import StreamRecorder, StreamStorageError, stream_still_wanted
from streaming.safe_json import UnsafeJSON, dumps_storable, loads_strict, safe_text
from streaming.ui_message import UIMessageBuilder

from . import events, recovery, selectors, services, titles, tools
from .attachments import files_of, text_with_attachments
from .catalog import model_for_room
from .context import fit_messages_to_budget, litellm_token_counter
from .llm import get_litellm, provider_options
from .models import Message, PendingToolCall
from .services import ReplyStart, ToolAnswer

logger = logging.getLogger(__name__)

# The replies this process runs, by stream id: a closed socket does not stop them.
RUNNING: dict[str, ReplyRun] = {}

DATA_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
# Room kept under MESSAGE_MAX_BYTES for what the estimate of a message's stored size leaves out.
MESSAGE_SIZE_RESERVE_BYTES = 1024
PART_OVERHEAD_BYTES = 64
# The most text one coalesced delta chunk holds: far below STREAM_CHUNK_MAX_BYTES, so never truncated.
HELD_DELTA_MAX_CHARS = 4096

FINISH_REASONS = {"stop": "stop", "tool_calls": "tool-calls", "function_call": "tool-calls",
                  "length": "length", "content_filter": "content-filter",
                  # Other names some OpenAI-compatible servers send (litellm's wrapper maps them too).
                  "eos": "stop", "eos_token": "stop", "end_turn": "stop", "stop_sequence": "stop",
                  "max_tokens": "length", "tool_use": "tool-calls"}


class ModelFailure(Exception):
    """The model call failed; the message says why, in words a user can act on."""


class AnswerLimitReached(Exception):
    """The answer reached MESSAGE_MAX_BYTES: it ends here, complete, with a note."""


class ToolWaitExpired(Exception):
    """Nobody answered a tool call within TOOL_WAIT_SECONDS."""


def history_messages(history: list[Message], system_prompt: str) -> list[dict[str, Any]]:
    """The conversation in OpenAI's chat format: each assistant step's text and tool calls, then
    the tools' results."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for message in history:
        if message.role == Message.Role.USER:
            # Attached files go with the text they came with, each in a delimited block.
            messages.append({"role": "user", "content": text_with_attachments(message.content, files_of(message))})
        else:
            messages.extend(_assistant_turns(message.parts))
    return messages


def _assistant_turns(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    steps: list[list[dict[str, Any]]] = [[]]
    for part in parts:
        if part.get("type") == "step-start" and steps[-1]:
            steps.append([])
        elif part.get("type") != "step-start":
            steps[-1].append(part)
    for step in steps:
        text = "".join(p.get("text", "") for p in step if p.get("type") == "text")
        calls = [p for p in step if str(p.get("type", "")).startswith("tool-")]
        if not text and not calls:
            continue
        turn: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            turn["tool_calls"] = [
                {"id": p["toolCallId"], "type": "function",
                 "function": {"name": p["type"][len("tool-"):], "arguments": json.dumps(p.get("input") or {})}}
                for p in calls
            ]
        turns.append(turn)
        for p in calls:
            result = p.get("output") if p.get("state") == "output-available" else {"error": p.get("errorText", "no result")}
            turns.append({"role": "tool", "tool_call_id": p["toolCallId"], "content": json.dumps(result)})
    return turns


class ChunkRelay:
    """Sends chunks to the room's group, batching those that pile up while a send is in flight, so a
    fast model costs few channel-layer messages. Transient chunks (index None) go out in order, alone."""

    def __init__(self, group: str, header: dict[str, Any]) -> None:
        self.group = group
        self.header = header
        self._pending: list[tuple[int | None, str]] = []
        self._sending: asyncio.Task[None] | None = None

    def push(self, index: int | None, body: str) -> None:
        self._pending.append((index, body))
        if self._sending is None:
            self._sending = asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        layer = get_channel_layer()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                for transient, run in itertools.groupby(batch, key=lambda entry: entry[0] is None):
                    if transient:
                        for _index, body in run:
                            await layer.group_send(self.group, {**self.header, "type": "stream.transient", "body": body})
                    else:
                        await layer.group_send(self.group, {**self.header, "chunks": list(run)})
        except Exception as error:
            # One line, no traceback: while the layer is down (Redis restarting) this fails for every
            # batch of every live stream, and a traceback each would flood the log.
            logger.warning("relaying chunks to %s failed (%s: %s); viewers fill the gap from the database",
                           self.group, type(error).__name__, error)
            self._pending.clear()
        finally:
            self._sending = None

    async def drain(self) -> None:
        while self._sending is not None:
            await asyncio.shield(self._sending)


class ReplyRun:
    """Streams one answer into a room: chunks to viewers and to the recorder, the message at the end."""

    def __init__(self, start: ReplyStart) -> None:
        self.start = start
        self.next_index = 0
        self.builder = UIMessageBuilder()
        self.recorder = StreamRecorder(start.stream_id, on_stop_requested=lambda: self.request_stop("aborted"))
        self.relay = ChunkRelay(
            events.room_group(start.room_id),
            {"type": "stream.chunks", "roomId": str(start.room_id), "requestId": start.request_id,
             "streamId": start.stream_id},
        )
        self.stop_reason: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.toolset: dict[str, tools.Tool] = {}
        self.waiting: dict[str, asyncio.Future[ToolAnswer]] = {}  # tool calls waiting for a person
        self.usage = {"inputTokens": 0, "outputTokens": 0, "totalTokens": 0}
        self.message_bytes = 0  # an estimate of the stored message's size, kept under MESSAGE_MAX_BYTES
        self._output_bytes: dict[str, int] = {}
        self._generation: asyncio.Task[str] | None = None
        self._open_parts: dict[str, str] = {}  # "text"/"reasoning" -> id of the open part
        self._held_delta: list[Any] | None = None  # [kind, part id, texts, length]: see _hold_delta
        self._part_serial = 0
        self._tool_call_ids: set[str] = set()  # every id this answer gave a tool call: never one twice

    # -- chunks ------------------------------------------------------------------------------

    def emit(self, chunk: dict[str, Any], *, transient: bool = False) -> None:
        """Send one chunk to viewers and the recorder. What a model, a tool or a client put in it is
        made safe to store and send first (no NaN, lone surrogate or U+0000), and the chunk takes its
        index only once nothing can fail any more: a number taken is a chunk stored and sent."""
        if self._held_delta is not None:
            self._release_delta()  # chunks keep their order
        chunk, body = dumps_storable(chunk)
        if transient:  # live only: no index, not stored, not replayed
            self.relay.push(None, body)
            return
        self.builder.apply(chunk)
        index = self.next_index
        self.next_index += 1
        if not self.recorder.failed:
            self.recorder.add(index, chunk, body)
        self.relay.push(index, body)

    def emit_data(self, name: str, data: Any, *, id: str | None = None, transient: bool = False) -> None:  # noqa: A002
        """A `data-<name>` part: one with the same name and id is updated in place, one without an
        id is appended, a transient one goes to live viewers only."""
        if not DATA_NAME_PATTERN.match(name):
            raise ValueError(f"data part name {name!r} must be lower-case letters, digits and '-'")
        chunk: dict[str, Any] = {"type": f"data-{name}", "data": data}
        if id is not None:
            chunk["id"] = id
        if transient:
            chunk["transient"] = True
        else:
            self.message_bytes += len(json.dumps(data, default=str)) + PART_OVERHEAD_BYTES
        self.emit(chunk, transient=transient)

    def _emit_data_from_any_thread(self) -> Callable[..., None]:
        """emit_data for a tool: a sync tool runs on a worker thread, and chunks are the loop's alone."""
        loop = asyncio.get_running_loop()

        def emit_data(name: str, data: Any, **options: Any) -> None:
            if not DATA_NAME_PATTERN.match(name):
                raise ValueError(f"data part name {name!r} must be lower-case letters, digits and '-'")
            try:
                on_loop = asyncio.get_running_loop() is loop
            except RuntimeError:
                on_loop = False
            if on_loop:
                self.emit_data(name, data, **options)
            else:  # runs before the tool's own result, which reaches the loop the same way, later
                loop.call_soon_threadsafe(lambda: self.emit_data(name, data, **options))

        return emit_data

    def _delta(self, kind: str, text: str) -> None:
        other = "reasoning" if kind == "text" else "text"
        self._close_part(other)
        if kind not in self._open_parts:
            self._part_serial += 1
            self._open_parts[kind] = f"{kind}-{self._part_serial}"
            self.message_bytes += PART_OVERHEAD_BYTES
            self.emit({"type": f"{kind}-start", "id": self._open_parts[kind]})
        # Text is stored twice: in its part and in the message's `content`.
        copies = 2 if kind == "text" else 1
        size = (len(json.dumps(text)) - 2) * copies
        room = self._size_budget() - self.message_bytes
        if size > room:
            text = _cut_to_json_size(text, room // copies)
            if text:
                self._hold_delta(kind, text)
            raise AnswerLimitReached
        self.message_bytes += size
        self._hold_delta(kind, text)

    def _hold_delta(self, kind: str, text: str) -> None:
        """Deltas of one part that the model sends within one turn of the event loop go out as one
        chunk: fewer chunks to store, relay and send when the model is fast, no delay when it is not."""
        part_id = self._open_parts[kind]
        held = self._held_delta
        if held is not None and (held[1] != part_id or held[3] >= HELD_DELTA_MAX_CHARS):
            self._release_delta()
            held = None
        if held is None:
            self._held_delta = [kind, part_id, [text], len(text)]
            asyncio.get_running_loop().call_soon(self._release_delta)
        else:
            held[2].append(text)
            held[3] += len(text)

    def _release_delta(self) -> None:
        held, self._held_delta = self._held_delta, None
        if held is not None:
            kind, part_id, texts, _length = held
            self.emit({"type": f"{kind}-delta", "id": part_id, "delta": "".join(texts)})

    def _close_part(self, kind: str) -> None:
        part_id = self._open_parts.pop(kind, None)
        if part_id is not None:
            self.emit({"type": f"{kind}-end", "id": part_id})

    def _close_parts(self) -> None:
        self._close_part("reasoning")
        self._close_part("text")

    @staticmethod
    def _size_budget() -> int:
        return max(settings.MESSAGE_MAX_BYTES - MESSAGE_SIZE_RESERVE_BYTES, 1024)

    def _emit_output(self, call_id: str, output: Any, *, final: bool) -> Any:
        """Send a tool's output; one too large to keep within MESSAGE_MAX_BYTES is stored (and shown)
        compacted. Returns what was sent."""
        text = json.dumps(output, default=str)
        self.message_bytes -= self._output_bytes.pop(call_id, 0)
        if self.message_bytes + len(text) > self._size_budget():
            output = {"compacted": True, "originalBytes": len(text), "preview": text[:300],
                      "note": "The output was too large to keep with the message (MESSAGE_MAX_BYTES)."}
            text = json.dumps(output)
        self._output_bytes[call_id] = len(text)
        self.message_bytes += len(text)
        chunk: dict[str, Any] = {"type": "tool-output-available", "toolCallId": call_id, "output": output}
        if not final:
            chunk["preliminary"] = True
        self.emit(chunk)
        return output

    # -- control -----------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Stop generating (cancel, shutdown, or the stream was ended elsewhere); what streamed is kept."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        if self._generation is not None and not self._generation.done():
            self._generation.cancel()

    def _take_answer(self, tool_call_id: str, answer: ToolAnswer) -> None:
        waiting = self.waiting.get(tool_call_id)
        if waiting is not None and not waiting.done():
            waiting.set_result(answer)

    async def _listen_for_control(self, channel: str) -> None:
        layer = get_channel_layer()
        while True:
            event = await layer.receive(channel)
            if event.get("type") == "stream.cancel":
                self.request_stop("aborted")
            elif event.get("type") == "tool.answer":
                self._take_answer(str(event.get("toolCallId")), ToolAnswer(event.get("answer") or {}, event.get("userId")))

    async def _beat(self) -> None:
        beat = database_sync_to_async(stream_still_wanted, thread_sensitive=False)
        answers = database_sync_to_async(services.tool_answers_for_stream, thread_sensitive=False)
        while True:
            await asyncio.sleep(settings.STREAM_HEARTBEAT_SECONDS)
            try:
                wanted = await beat(self.start.stream_id)
                if self.waiting:  # in case the channel layer lost the news of an answer
                    for tool_call_id, answer in (await answers(stream_id=self.start.stream_id)).items():
                        self._take_answer(tool_call_id, answer)
            except Exception:  # a passing database error must not end the heartbeat for good
                logger.warning("heartbeat of stream %s failed; trying again", self.start.stream_id, exc_info=True)
                continue
            if not wanted:
                self.request_stop("aborted")

    async def _subscribe_to_control(self) -> tuple[str, str] | None:
        """Join the stream's control group; without it, cancel and tool answers still arrive
        through the database, at the next heartbeat."""
        layer = get_channel_layer()
        try:
            channel = await layer.new_channel()
            await layer.group_add(events.stream_control_group(self.start.stream_id), channel)
        except Exception:
            logger.warning("stream %s: no control channel; cancel will come through the database",
                           self.start.stream_id, exc_info=True)
            return None
        return events.stream_control_group(self.start.stream_id), channel

    # -- the reply ---------------------------------------------------------------------------

    async def run(self) -> None:
        # The first chunk goes out before anything can fail or be cancelled, so every stream is a
        # well-formed UI message stream from `start` on.
        self.emit({"type": "start", "messageId": str(self.start.message_id)})
        control = await self._subscribe_to_control()
        # The heartbeat goes on until the stream is finished: a stopping worker is still alive.
        heartbeat = asyncio.create_task(self._beat())
        helpers: list[asyncio.Task[None]] = []
        if control is not None:
            helpers.append(asyncio.create_task(self._listen_for_control(control[1])))
        status, error_text = "complete", None
        outer_cancelled = False
        self._generation = asyncio.create_task(self._generate())
        if self.stop_reason is not None:
            self._generation.cancel()
        try:
            await self._generation
        except asyncio.CancelledError:
            outer_cancelled = (asyncio.current_task().cancelling() or 0) > 0  # type: ignore[union-attr]
            if outer_cancelled:
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
            status = "interrupted" if outer_cancelled else (self.stop_reason or "aborted")
        except ModelFailure as failure:
            status, error_text = "error", str(failure)
        except StreamStorageError:
            logger.exception("stream %s: storing chunks failed", self.start.stream_id)
            status, error_text = "error", "The answer could not be stored; what streamed is kept."
        except Exception as failure:  # a bug or the database: the stream still ends, and says so
            logger.exception("reply %s failed", self.start.stream_id)
            status, error_text = "error", f"The answer failed: {type(failure).__name__}."
        finally:
            for helper in helpers:
                helper.cancel()
        try:
            await self._finish(status, error_text)
            if status == "complete" and self.start.title_wanted:
                titles.title_room_soon(room_id=self.start.room_id, model=model_for_room(self.start.model))
        except Exception:
            # The stream keeps its last heartbeat: the stale sweep finishes it as interrupted.
            logger.exception("stream %s could not be finished; the stale sweep will", self.start.stream_id)
        finally:
            heartbeat.cancel()
            if control is not None:
                try:
                    await get_channel_layer().group_discard(*control)
                except Exception:
                    logger.warning("leaving the control group of %s failed", self.start.stream_id, exc_info=True)
            RUNNING.pop(self.start.stream_id, None)
        if outer_cancelled:
            raise asyncio.CancelledError

    async def _finish(self, status: str, error_text: str | None) -> None:
        self._release_delta()
        self._close_parts()
        # Tool calls left open end as errors in the stream itself, so that the stream and the
        # stored message agree.
        for tool_call_id, why in self.builder.unfinished_tool_calls():
            self.emit({"type": "tool-output-error", "toolCallId": tool_call_id, "errorText": why})
        if status == "aborted":
            self.emit({"type": "abort"})
        elif status == "error":
            self.emit({"type": "error", "errorText": error_text or "The answer failed."})
        elif status == "interrupted":
            self.emit({"type": "error", "errorText": "The server stopped while answering; what streamed is kept."})
        try:
            await self.recorder.close()
        except StreamStorageError:
            logger.exception("stream %s: chunks could not all be stored", self.start.stream_id)
            if status == "complete":
                status, error_text = "error", "The answer could not be stored completely."
        await self.relay.drain()
        # Off the shared database thread: a finish waiting for a locked table must not hold up the
        # worker's other sockets (see docs/architecture.md, "Database work off the hot path").
        # Every chunk was made storable (emit), so the message built from them is too.
        await database_sync_to_async(services.reply_finish, thread_sensitive=False)(
            start=self.start,
            status=status,
            content=self.builder.text,
            parts=self.builder.final_parts(),
            last_index=self.next_index - 1,
            error_text=error_text,
        )

    async def _generate(self) -> str:
        self.toolset = await self._tools_for_reply()
        history = await database_sync_to_async(selectors.history_for_model)(
            room_id=self.start.room_id, before_message_id=self.start.message_id
        )
        messages = history_messages(history, self.start.system_prompt or settings.LLM_SYSTEM_PROMPT)
        count_tokens = litellm_token_counter(model_for_room(self.start.model))
        finish_reason = "stop"
        try:
            for _step in range(max(1, settings.LLM_MAX_STEPS)):
                self.emit({"type": "start-step"})
                # Counting tokens takes CPU in proportion to the history: off the event loop.
                fitted = await asyncio.to_thread(
                    fit_messages_to_budget, messages, budget_tokens=settings.LLM_CONTEXT_TOKENS,
                    count_tokens=count_tokens,
                )
                calls, finish_reason, text = await self._model_step(fitted)
                self._close_parts()
                if calls:
                    messages.append(_assistant_tool_turn(text, calls))
                    await self._run_tools(calls, messages)
                self.emit({"type": "finish-step"})
                if not calls:
                    break
        except AnswerLimitReached:
            self._close_parts()
            self.emit_data("notice", {"kind": "message-size", "text": (
                f"The answer was cut here: a message may hold at most {settings.MESSAGE_MAX_BYTES} bytes.")},
                id="message-size")
            self.emit({"type": "finish-step"})
            finish_reason = "length"
        self.emit({"type": "finish", "finishReason": FINISH_REASONS.get(finish_reason, "other")})
        return finish_reason

    async def _tools_for_reply(self) -> dict[str, tools.Tool]:
        """The registry, the tools of the MCP servers that are up, and the client's own for this request."""
        toolset = tools.registered_tools()
        if settings.MCP_SERVERS:
            from .mcp_servers import mcp_tools

            for remote in await mcp_tools():
                if remote.name in toolset:
                    logger.warning("MCP tool %s has the name of another tool; left out", remote.name)
                    continue
                toolset[remote.name] = tools.Tool(remote.name, remote.description, remote.input_schema,
                                                  _mcp_executor(remote.name))
        try:
            declared = tools.client_tools_from_body(self.start.body, taken=set(toolset))
        except tools.ToolDeclarationError as error:  # checked at chat.send; an MCP tool may have taken a name since
            logger.warning("stream %s: client tools left out: %s", self.start.stream_id, error)
            declared = []
        toolset.update((spec.name, spec) for spec in declared)
        return toolset

    def _completion_arguments(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        model = model_for_room(self.start.model)
        arguments: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},  # token counts for the data-usage part
            "timeout": settings.LLM_TIMEOUT_SECONDS,
        }
        if self.toolset:
            arguments["tools"] = [spec.openai_schema() for spec in self.toolset.values()]
        return {**arguments, **provider_options(model)}

    async def _model_step(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str, str]:
        """One call to the model: (tool calls, finish reason, text)."""
        litellm = get_litellm()
        calls: dict[int, dict[str, Any]] = {}
        text_parts: list[str] = []
        finish_reason = "stop"
        usage = None
        try:
            response = await litellm.acompletion(**self._completion_arguments(messages))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise ModelFailure(_describe_model_error(error)) from error
        reasoning_parts: list[str] = []
        finished = False
        chunks, wrapped = model_chunks(response)
        try:
            async for part in chunks:
                usage = _usage_of(part) or usage
                if not part.choices:
                    continue
                choice = part.choices[0]
                delta = choice.delta  # None in a server's bare finish chunk, read past litellm's wrapper
                if delta is not None:
                    # The model's words go on to the database, to viewers and back to the model in the
                    # next step: a lone surrogate or U+0000 in them would fail all three.
                    reasoning = reasoning_of(delta)
                    if reasoning:
                        reasoning = safe_text(reasoning)
                        reasoning_parts.append(reasoning)
                        self._delta("reasoning", reasoning)
                    if delta.content:
                        content = safe_text(delta.content)
                        text_parts.append(content)
                        self._delta("text", content)
                    for position, call in enumerate(delta.tool_calls or []):
                        self._tool_call_delta(calls, call, position)
                if choice.finish_reason == "error":  # how some servers (OpenRouter) end a failed stream
                    raise ModelFailure("The model stopped with an error before finishing its answer.")
                if choice.finish_reason:
                    finish_reason = choice.finish_reason
                    finished = True
                await self.recorder.wait_for_room()
        except (asyncio.CancelledError, AnswerLimitReached, StreamStorageError, ModelFailure):
            raise
        except Exception as error:
            # A server that drops the connection after its last chunk has still said everything.
            if not (finished and _is_dropped_connection(error)):
                raise ModelFailure(_describe_model_error(error)) from error
        finally:
            # On cancel this closes the HTTP request, so the model server stops generating.
            await asyncio.shield(_close_quietly(response))
        text = "".join(text_parts)
        if usage is None and not wrapped:
            # litellm's wrapper estimates what a server does not report; the chunks read past it do
            # not. Like the wrapper, the answer's output is its text, reasoning and tool calls.
            output = "".join([text, *reasoning_parts, *(call["name"] + call["arguments"] for call in calls.values())])
            usage = await asyncio.to_thread(_estimated_usage, model_for_room(self.start.model), messages, output)
        self._count_usage(usage)
        return [calls[index] for index in sorted(calls)], finish_reason, text

    def _count_usage(self, usage: Any) -> None:
        """Add a step's token counts to the message's `data-usage` part, updated in place."""
        if usage is None:
            return
        self.usage["inputTokens"] += getattr(usage, "prompt_tokens", 0) or 0
        self.usage["outputTokens"] += getattr(usage, "completion_tokens", 0) or 0
        self.usage["totalTokens"] += getattr(usage, "total_tokens", 0) or 0
        self.emit_data("usage", {"model": model_for_room(self.start.model), **self.usage}, id="usage")

    def _tool_call_delta(self, calls: dict[int, dict[str, Any]], call: Any, position: int) -> None:
        """One tool call's delta; `position`, its place in its chunk, numbers a call the server sent
        without an index (as litellm's wrapper does)."""
        index = getattr(call, "index", None)
        if index is None:
            index = position
        function = getattr(call, "function", None)
        name = safe_text(getattr(function, "name", None) or "")
        arguments = safe_text(getattr(function, "arguments", None) or "")
        entry = calls.get(index)
        if entry is None:
            self._close_parts()
            entry = calls[index] = {"id": self._new_tool_call_id(safe_text(call.id or "")), "name": name or "unknown",
                                    "arguments": ""}
            self.message_bytes += PART_OVERHEAD_BYTES
            self.emit({"type": "tool-input-start", "toolCallId": entry["id"], "toolName": entry["name"]})
        if arguments:
            entry["arguments"] += arguments
            self.message_bytes += len(arguments)
            self.emit({"type": "tool-input-delta", "toolCallId": entry["id"], "inputTextDelta": arguments})

    def _new_tool_call_id(self, given: str | None) -> str:
        """An id no other call of this answer has: the model's own when it gave one that is new (a
        server may number its calls from 0 in every step, or give none at all)."""
        base = given or f"call_{self.start.stream_id[:8]}"
        candidate = given or f"{base}_{len(self._tool_call_ids)}"
        serial = itertools.count(len(self._tool_call_ids) + 1)
        while candidate in self._tool_call_ids:
            candidate = f"{base}_{next(serial)}"
        self._tool_call_ids.add(candidate)
        return candidate

    async def _run_tools(self, calls: list[dict[str, Any]], messages: list[dict[str, Any]]) -> None:
        for call in calls:
            result = await self._run_tool_call(call)
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result, default=str)})

    async def _run_tool_call(self, call: dict[str, Any]) -> Any:
        """Carry out one tool call, asking a person first where the tool wants it; returns what the
        model sees (the full output, an error, or a denial)."""
        call_id, name = call["id"], call["name"]
        try:
            arguments = loads_strict(call["arguments"] or "{}")
        except UnsafeJSON:  # the tool is not run: check_arguments refuses anything but an object
            arguments = call["arguments"]
        input_available = {"type": "tool-input-available", "toolCallId": call_id, "toolName": name, "input": arguments}
        spec = self.toolset.get(name)
        # A client answers a client tool's call as soon as it sees it: that chunk waits for the wait.
        announced = spec is None or not spec.runs_on_client
        if announced:
            self.emit(input_available)
        waited = False
        try:
            if spec is None:
                raise tools.ToolInputError(f"there is no tool named {name!r}")
            arguments = tools.check_arguments(spec, arguments)
            approver_id = None
            if spec.runs_on_client:
                waited = True
                waiting = await self._open_wait(call_id, name, PendingToolCall.Kind.CLIENT)
                self.emit(input_available)
                announced = True
                answer = await self._wait_for_person(call_id, waiting, PendingToolCall.Kind.CLIENT)
                output = tools.cap_output(answer.answer.get("output"))
                self._emit_output(call_id, output, final=True)
                return output
            if spec.approval_required(arguments):
                waited = True
                approval_id = f"approval-{call_id}"
                waiting = await self._open_wait(call_id, name, PendingToolCall.Kind.APPROVAL)
                self.emit({"type": "tool-approval-request", "approvalId": approval_id, "toolCallId": call_id})
                answer = await self._wait_for_person(call_id, waiting, PendingToolCall.Kind.APPROVAL)
                approved = bool(answer.answer.get("approved"))
                self.emit({"type": "tool-approval-response", "approvalId": approval_id, "approved": approved})
                if not approved:
                    self.emit({"type": "tool-output-denied", "toolCallId": call_id})
                    return {"denied": True, "reason": "A person in the chat denied this tool call."}
                approver_id = answer.user_id
            context = tools.ToolContext(
                room_id=self.start.room_id, user_id=self.start.user_id, approver_id=approver_id,
                tool_call_id=call_id, body=dict(self.start.body or {}), emit_data=self._emit_data_from_any_thread(),
            )
            output: Any = None
            async for output, final in tools.run_tool(spec, arguments, context):
                self._emit_output(call_id, output, final=final)
            return output
        except (asyncio.CancelledError, AnswerLimitReached):
            waited = False
            raise
        except Exception as error:
            if isinstance(error, DatabaseError):  # its text is the database's, for the log only
                logger.exception("stream %s: tool call %s failed in the database", self.start.stream_id, call_id)
                message = "The tool call could not be recorded; try again."
            else:
                message = str(error) or type(error).__name__
            if not announced:
                self.emit(input_available)
            self.emit({"type": "tool-output-error", "toolCallId": call_id, "errorText": message})
            return {"error": message}
        finally:
            if waited:
                await self._publish_progress()

    async def _open_wait(self, tool_call_id: str, tool_name: str, kind: str) -> asyncio.Future[ToolAnswer]:
        """Make a call answerable: from here on a `tool.approval` or `tool.result` for it is taken, so
        the chunk that asks for the answer goes out after this, never before (a client may answer at once)."""
        waiting: asyncio.Future[ToolAnswer] = asyncio.get_running_loop().create_future()
        self.waiting[tool_call_id] = waiting
        try:
            await database_sync_to_async(services.tool_wait_begin, thread_sensitive=False)(
                start=self.start, tool_call_id=tool_call_id, tool_name=tool_name, kind=kind)
        except BaseException:
            self.waiting.pop(tool_call_id, None)
            raise
        return waiting

    async def _wait_for_person(self, tool_call_id: str, waiting: asyncio.Future[ToolAnswer], kind: str) -> ToolAnswer:
        """Wait for `tool.approval` or `tool.result` from anyone who can see the room, on any worker."""
        try:
            await self.recorder.flush()  # a viewer who joins now replays the request and can answer it
            await self._publish_progress()
            try:
                return await asyncio.wait_for(asyncio.shield(waiting), timeout=settings.TOOL_WAIT_SECONDS)
            except TimeoutError:
                late = await database_sync_to_async(services.tool_wait_expire, thread_sensitive=False)(
                    stream_id=self.start.stream_id, tool_call_id=tool_call_id)
                if late is not None:
                    return late
                what = "approval" if kind == PendingToolCall.Kind.APPROVAL else "result from the client"
                raise ToolWaitExpired(f"No {what} came within {settings.TOOL_WAIT_SECONDS} seconds.") from None
        finally:
            self.waiting.pop(tool_call_id, None)

    async def _publish_progress(self) -> None:
        try:
            await database_sync_to_async(services.reply_publish_progress, thread_sensitive=False)(
                start=self.start, parts=copy.deepcopy(self.builder.parts))
        except Exception:  # viewers still have the chunks; message.updated is a courtesy
            logger.warning("stream %s: publishing progress failed", self.start.stream_id, exc_info=True)


def model_chunks(response: Any) -> tuple[Any, bool]:
    """The chunks to read of a streamed litellm response, and whether they are litellm's wrapped ones.

    For an OpenAI-compatible server (every provider litellm serves through its OpenAI client)
    litellm's provider stream is the openai SDK's own stream of `ChatCompletionChunk`s, already in
    the shape the wrapper turns every provider's chunks into.
    Reading it directly skips the wrapper's per-chunk rebuilding and its end-of-stream reassembly of
    the whole response for litellm's logging, which the app does not use: three quarters of the CPU
    of relaying a token (docs/benchmarks.md). litellm still makes the call: the provider's
    parameters, authentication, errors on connect and the HTTP client. What of the wrapper's work
    the app needs, `_model_step` does (docs/architecture.md, "litellm"). Every other provider's
    chunks go through the wrapper.
    """
    from openai import AsyncStream

    stream = getattr(response, "completion_stream", None)
    if isinstance(stream, AsyncStream):
        return stream, False
    return response, True


def reasoning_of(delta: Any) -> str | None:
    """A delta's reasoning text: litellm's `reasoning_content`, or what an OpenAI-compatible server
    sent as `reasoning_content` or `reasoning` (both extra fields to the openai SDK). Read from the
    model's dicts: `getattr` on a missing extra field costs pydantic an exception per chunk."""
    extra = getattr(delta, "__pydantic_extra__", None) or {}
    return delta.__dict__.get("reasoning_content") or extra.get("reasoning_content") or extra.get("reasoning")


def _estimated_usage(model: str, messages: list[dict[str, Any]], output: str) -> SimpleNamespace | None:
    """Token counts estimated offline as litellm's wrapper does, for a server that reports none."""
    try:
        prompt_tokens = litellm_token_counter(model)(messages)
        completion_tokens = get_litellm().token_counter(model=model, text=output, count_response_tokens=True)
    except Exception:  # an estimate is best effort: without it the answer just has no usage part
        logger.warning("estimating the token usage of %s failed", model, exc_info=True)
        return None
    return SimpleNamespace(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                           total_tokens=prompt_tokens + completion_tokens)


def _is_dropped_connection(error: Exception) -> bool:
    import httpx

    return isinstance(error, (httpx.ReadError, httpx.RemoteProtocolError))


def _usage_of(part: Any) -> Any:
    """A stream chunk's token usage, if it has one. litellm keeps it among pydantic's extra fields, and
    `getattr` on the many chunks without it goes through pydantic's __getattr__ and an exception:
    2.7% of a busy worker's CPU (docs/benchmarks.md)."""
    found = part.__dict__.get("usage")
    if found is None:
        found = (getattr(part, "__pydantic_extra__", None) or {}).get("usage")
    return found


def _assistant_tool_turn(text: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [{"id": c["id"], "type": "function",
                        "function": {"name": c["name"], "arguments": c["arguments"] or "{}"}} for c in calls],
    }


def _mcp_executor(name: str) -> Any:
    from .mcp_servers import mcp_call_tool

    async def execute(**arguments: Any) -> Any:
        return await mcp_call_tool(name, arguments)

    return execute


def _cut_to_json_size(text: str, size: int) -> str:
    """The longest prefix of text whose JSON string form is at most `size` bytes (quotes aside)."""
    kept = text[: max(size, 0)]
    while kept and len(json.dumps(kept)) - 2 > size:
        kept = kept[: len(kept) * 3 // 4]
    return kept


async def _close_quietly(response: Any) -> None:
    close = getattr(response, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:  # the connection may already be gone; closing is best effort
        logger.debug("closing the model response failed", exc_info=True)


def _describe_model_error(error: Exception) -> str:
    # httpx's errors read past litellm's wrapper often have no message: their name says what happened.
    text = str(error).replace("litellm.", "").strip() or type(error).__name__
    return f"The model call failed: {text[:500]}"


async def interrupt_all(timeout: float = 20) -> None:
    """Shutdown: stop every reply of this process and let each store itself as `interrupted`."""
    runs = list(RUNNING.values())
    for run in runs:
        run.request_stop("interrupted")
    tasks = [run.task for run in runs if run.task is not None]
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


def install_shutdown_hook() -> None:
    """Under daphne, finish this worker's live answers as `interrupted` before the process exits."""
    if "twisted.internet.reactor" not in sys.modules or getattr(install_shutdown_hook, "done", False):
        return
    from twisted.internet import defer, reactor

    async def stop_everything() -> None:
        await interrupt_all()
        if settings.MCP_SERVERS:
            from .mcp_servers import mcp_close_all

            await mcp_close_all()

    def before_shutdown() -> defer.Deferred:
        return defer.Deferred.fromFuture(asyncio.ensure_future(stop_everything()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    install_shutdown_hook.done = True  # type: ignore[attr-defined]


def start_reply(start: ReplyStart) -> ReplyRun:
    """Run a reply as a task of this worker process, not of the socket that asked for it."""
    install_shutdown_hook()
    recovery.ensure_sweeper()
    run = ReplyRun(start)
    RUNNING[start.stream_id] = run
    run.task = asyncio.get_running_loop().create_task(run.run(), name=f"reply-{start.stream_id}")
    return run
