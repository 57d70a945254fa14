"""One reply: room history -> litellm -> protocol chunks, with the tool loop and cancel, run by the worker."""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from functools import cache
from types import ModuleType
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from streaming.recorder import StreamRecorder, StreamStorageError, stream_still_wanted
from streaming.ui_message import UIMessageBuilder

from . import events, recovery, selectors, services, tools
from .catalog import BUILTIN_MODEL, model_for_room
from .models import Message
from .services import ReplyStart

logger = logging.getLogger(__name__)

# The replies this process runs, by stream id: a closed socket does not stop them.
RUNNING: dict[str, ReplyRun] = {}

FINISH_REASONS = {"stop": "stop", "tool_calls": "tool-calls", "function_call": "tool-calls",
                  "length": "length", "content_filter": "content-filter"}


@cache
def get_litellm() -> ModuleType:
    """Import and configure litellm on first use: the import takes seconds, and most commands never need it."""
    import litellm

    from .local_model import PROVIDER, LocalDemoModel

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    # httpx, not aiohttp: closing an httpx stream closes the model's connection at once, which
    # is what makes chat.cancel stop the model's work.
    litellm.disable_aiohttp_transport = True
    litellm.custom_provider_map = [
        *[entry for entry in litellm.custom_provider_map if entry.get("provider") != PROVIDER],
        {"provider": PROVIDER, "custom_handler": LocalDemoModel()},
    ]
    return litellm


def warm_up_in_background() -> None:
    """Import litellm on a thread while a server process starts, so that its first answer does not
    wait seconds for the import."""
    threading.Thread(target=get_litellm, name="litellm-import", daemon=True).start()


class ModelFailure(Exception):
    """The model call failed; the message says why, in words a user can act on."""


def history_messages(history: list[Message], system_prompt: str) -> list[dict[str, Any]]:
    """The conversation in OpenAI's chat format: each assistant step's text and tool calls, then
    the tools' results."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for message in history:
        if message.role == Message.Role.USER:
            messages.append({"role": "user", "content": message.content})
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
    fast model costs few channel-layer messages."""

    def __init__(self, group: str, header: dict[str, Any]) -> None:
        self.group = group
        self.header = header
        self._pending: list[tuple[int, str]] = []
        self._sending: asyncio.Task[None] | None = None

    def push(self, index: int, body: str) -> None:
        self._pending.append((index, body))
        if self._sending is None:
            self._sending = asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        layer = get_channel_layer()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await layer.group_send(self.group, {**self.header, "chunks": batch})
        except Exception:
            logger.exception("relaying chunks to %s failed; viewers fill the gap from the database", self.group)
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
        self._generation: asyncio.Task[str] | None = None
        self._open_parts: dict[str, str] = {}  # "text"/"reasoning" -> id of the open part
        self._part_serial = 0

    # -- chunks ------------------------------------------------------------------------------

    def emit(self, chunk: dict[str, Any]) -> None:
        index = self.next_index
        self.next_index += 1
        body = json.dumps(chunk, separators=(",", ":"), ensure_ascii=False)
        self.builder.apply(chunk)
        if not self.recorder.failed:
            self.recorder.add(index, chunk, body)
        self.relay.push(index, body)

    def _delta(self, kind: str, text: str) -> None:
        other = "reasoning" if kind == "text" else "text"
        self._close_part(other)
        if kind not in self._open_parts:
            self._part_serial += 1
            self._open_parts[kind] = f"{kind}-{self._part_serial}"
            self.emit({"type": f"{kind}-start", "id": self._open_parts[kind]})
        self.emit({"type": f"{kind}-delta", "id": self._open_parts[kind], "delta": text})

    def _close_part(self, kind: str) -> None:
        part_id = self._open_parts.pop(kind, None)
        if part_id is not None:
            self.emit({"type": f"{kind}-end", "id": part_id})

    def _close_parts(self) -> None:
        self._close_part("reasoning")
        self._close_part("text")

    # -- control -----------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Stop generating (cancel, shutdown, or the stream was ended elsewhere); what streamed is kept."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        if self._generation is not None and not self._generation.done():
            self._generation.cancel()

    async def _listen_for_cancel(self, channel: str) -> None:
        layer = get_channel_layer()
        while True:
            event = await layer.receive(channel)
            if event.get("type") == "stream.cancel":
                self.request_stop("aborted")

    async def _beat(self) -> None:
        beat = database_sync_to_async(stream_still_wanted, thread_sensitive=False)
        while True:
            await asyncio.sleep(settings.STREAM_HEARTBEAT_SECONDS)
            try:
                wanted = await beat(self.start.stream_id)
            except Exception:  # a passing database error must not end the heartbeat for good
                logger.warning("heartbeat of stream %s failed; trying again", self.start.stream_id, exc_info=True)
                continue
            if not wanted:
                self.request_stop("aborted")

    async def _subscribe_to_cancel(self) -> tuple[str, str] | None:
        """Join the stream's control group; without it, cancel still arrives through the database flag."""
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
        control = await self._subscribe_to_cancel()
        helpers = [asyncio.create_task(self._beat())]
        if control is not None:
            helpers.append(asyncio.create_task(self._listen_for_cancel(control[1])))
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
        except Exception:
            # The stream keeps its last heartbeat: the stale sweep finishes it as interrupted.
            logger.exception("stream %s could not be finished; the stale sweep will", self.start.stream_id)
        finally:
            if control is not None:
                try:
                    await get_channel_layer().group_discard(*control)
                except Exception:
                    logger.warning("leaving the control group of %s failed", self.start.stream_id, exc_info=True)
            RUNNING.pop(self.start.stream_id, None)
        if outer_cancelled:
            raise asyncio.CancelledError

    async def _finish(self, status: str, error_text: str | None) -> None:
        self._close_parts()
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
        await database_sync_to_async(services.reply_finish)(
            start=self.start,
            status=status,
            content=self.builder.text,
            parts=self.builder.final_parts(),
            last_index=self.next_index - 1,
            error_text=error_text,
        )

    async def _generate(self) -> str:
        history = await database_sync_to_async(selectors.history_for_model)(
            room_id=self.start.room_id, before_message_id=self.start.message_id
        )
        messages = history_messages(history, self.start.system_prompt or settings.LLM_SYSTEM_PROMPT)
        finish_reason = "stop"
        for _step in range(max(1, settings.LLM_MAX_STEPS)):
            self.emit({"type": "start-step"})
            calls, finish_reason = await self._model_step(messages)
            self._close_parts()
            if calls:
                await self._run_tools(calls, messages)
            self.emit({"type": "finish-step"})
            if not calls:
                break
        self.emit({"type": "finish", "finishReason": FINISH_REASONS.get(finish_reason, "other")})
        return finish_reason

    def _completion_arguments(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        model = model_for_room(self.start.model)
        arguments: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "stream": True,
            "tools": [spec.openai_schema() for spec in tools.REGISTRY.values()],
            "timeout": settings.LLM_TIMEOUT_SECONDS,
        }
        if model != BUILTIN_MODEL:
            arguments["max_retries"] = 0
            if settings.LLM_API_BASE:
                arguments["api_base"] = settings.LLM_API_BASE
            if settings.LLM_API_KEY or settings.LLM_API_BASE:
                arguments["api_key"] = settings.LLM_API_KEY or "no-key"
        return arguments

    async def _model_step(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
        litellm = get_litellm()
        calls: dict[int, dict[str, Any]] = {}
        text_parts: list[str] = []
        finish_reason = "stop"
        try:
            response = await litellm.acompletion(**self._completion_arguments(messages))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise ModelFailure(_describe_model_error(error)) from error
        try:
            async for part in response:
                if not part.choices:
                    continue
                choice = part.choices[0]
                delta = choice.delta
                reasoning = getattr(delta, "reasoning_content", None)
                if reasoning:
                    self._delta("reasoning", reasoning)
                if delta.content:
                    text_parts.append(delta.content)
                    self._delta("text", delta.content)
                for call in delta.tool_calls or []:
                    self._tool_call_delta(calls, call)
                if choice.finish_reason:
                    finish_reason = choice.finish_reason
                await self.recorder.wait_for_room()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise ModelFailure(_describe_model_error(error)) from error
        finally:
            # On cancel this closes the HTTP request, so the model server stops generating.
            await asyncio.shield(_close_quietly(response))
        ordered = [calls[index] for index in sorted(calls)]
        if ordered:
            messages.append({
                "role": "assistant",
                "content": "".join(text_parts) or None,
                "tool_calls": [{"id": c["id"], "type": "function",
                                "function": {"name": c["name"], "arguments": c["arguments"] or "{}"}}
                               for c in ordered],
            })
        return ordered, finish_reason

    def _tool_call_delta(self, calls: dict[int, dict[str, Any]], call: Any) -> None:
        index = getattr(call, "index", None) or 0
        function = getattr(call, "function", None)
        name = getattr(function, "name", None)
        arguments = getattr(function, "arguments", None) or ""
        entry = calls.get(index)
        if entry is None:
            self._close_parts()
            entry = calls[index] = {"id": call.id or f"call_{self.start.stream_id[:8]}_{index}",
                                    "name": name or "unknown", "arguments": ""}
            self.emit({"type": "tool-input-start", "toolCallId": entry["id"], "toolName": entry["name"]})
        if arguments:
            entry["arguments"] += arguments
            self.emit({"type": "tool-input-delta", "toolCallId": entry["id"], "inputTextDelta": arguments})

    async def _run_tools(self, calls: list[dict[str, Any]], messages: list[dict[str, Any]]) -> None:
        for call in calls:
            try:
                arguments = json.loads(call["arguments"] or "{}")
            except ValueError:
                arguments = call["arguments"]
            self.emit({"type": "tool-input-available", "toolCallId": call["id"], "toolName": call["name"],
                       "input": arguments})
            try:
                output = await tools.run_tool(call["name"], arguments)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                message = str(error) or type(error).__name__
                self.emit({"type": "tool-output-error", "toolCallId": call["id"], "errorText": message})
                result: Any = {"error": message}
            else:
                self.emit({"type": "tool-output-available", "toolCallId": call["id"], "output": output})
                result = output
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)})


async def _close_quietly(response: Any) -> None:
    close = getattr(response, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:  # the connection may already be gone; closing is best effort
        logger.debug("closing the model response failed", exc_info=True)


def _describe_model_error(error: Exception) -> str:
    text = str(error).replace("litellm.", "").strip()
    return f"The model call failed: {text[:500]}" if text else "The model call failed."


async def interrupt_all(timeout: float = 20) -> None:
    """Shutdown: stop every reply of this process and let each store itself as `interrupted`."""
    runs = list(RUNNING.values())
    for run in runs:
        run.request_stop("interrupted")
    tasks = [run.task for run in runs if run.task is not None]
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


def start_reply(start: ReplyStart) -> ReplyRun:
    """Run a reply as a task of this worker process, not of the socket that asked for it."""
    recovery.install_shutdown_hook()
    recovery.ensure_sweeper()
    run = ReplyRun(start)
    RUNNING[start.stream_id] = run
    run.task = asyncio.get_running_loop().create_task(run.run(), name=f"reply-{start.stream_id}")
    return run
