"""A local OpenAI-compatible chat-completions server that streams scripted replies, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class ScriptedReply:
    """One model answer: text tokens, then tool calls, streamed as `chat.completion.chunk` frames."""

    tokens: list[str] = field(default_factory=list)
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments as JSON text)
    reasoning: list[str] = field(default_factory=list)
    delay: float = 0.0  # seconds between frames
    fail_after: int | None = None  # drop the connection after this many text tokens
    status: int = 200  # a non-200 answers at once with an OpenAI-style error body
    hold_open: bool = False  # after the tokens, keep the response open until the client leaves
    reasoning_field: str = "reasoning_content"  # some servers (vLLM, Groq) call it "reasoning"
    usage: bool = True  # send a usage chunk before [DONE]
    drop_after_finish: bool = False  # close the connection after the finish chunk, with no [DONE]
    # Chunks' `choices[0]` sent as they are, after the tokens and instead of the finish chunk (each
    # choice says its own finish_reason): what some servers send and the scripted flow does not.
    raw_choices: list[dict[str, Any]] = field(default_factory=list)


def echo_reply(request_body: dict[str, Any]) -> ScriptedReply:
    """The reply used when nothing is scripted: echoes the newest user message word by word."""
    last_user = next(
        (m for m in reversed(request_body.get("messages", [])) if m.get("role") == "user"), {}
    )
    content = last_user.get("content") or ""
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    words = f"Echo: {content}".split(" ")
    return ScriptedReply(tokens=[w if i == 0 else " " + w for i, w in enumerate(words)])


class ScriptedModelServer:
    """Serves /v1/chat/completions on 127.0.0.1 from a background thread with its own event loop."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, model: str = "scripted") -> None:
        self.host = host
        self.port = port
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.client_disconnected = threading.Event()
        self.stream_started = threading.Event()
        self._replies: deque[ScriptedReply] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def enqueue(self, *replies: ScriptedReply) -> None:
        with self._lock:
            self._replies.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._replies.clear()
            self.requests.clear()
        self.client_disconnected.clear()
        self.stream_started.clear()

    def _next_reply(self, body: dict[str, Any]) -> ScriptedReply:
        with self._lock:
            self.requests.append(body)
            return self._replies.popleft() if self._replies else echo_reply(body)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ScriptedModelServer:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._chat_completions)
            app.router.add_post("/chat/completions", self._chat_completions)
            self._runner = web.AppRunner(app, handle_signals=False)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="scripted-model-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the scripted model server did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # -- the endpoint ----------------------------------------------------------------------

    def _frame(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": finish_reason}])

    def _chunk(self, choices: list[dict[str, Any]], **fields: Any) -> bytes:
        payload = {
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices,
            **fields,
        }
        return f"data: {json.dumps(payload)}\n\n".encode()

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        reply = self._next_reply(body)
        if reply.status != 200:
            return web.json_response(
                {"error": {"message": "scripted failure", "type": "server_error", "code": reply.status}},
                status=reply.status,
            )
        if not body.get("stream"):
            return web.json_response(self._whole_completion(reply))

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.stream_started.set()
        try:
            await self._stream(request, response, reply)
        except ConnectionResetError:
            self.client_disconnected.set()
        except asyncio.CancelledError:
            self.client_disconnected.set()
            raise
        return response

    async def _pause(self, request: web.Request, seconds: float) -> None:
        if seconds:
            await asyncio.sleep(seconds)
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")

    async def _stream(self, request: web.Request, response: web.StreamResponse, reply: ScriptedReply) -> None:
        await response.write(self._frame({"role": "assistant", "content": ""}))
        for piece in reply.reasoning:
            await self._pause(request, reply.delay)
            await response.write(self._frame({reply.reasoning_field: piece}))
        for sent, token in enumerate(reply.tokens):
            if reply.fail_after is not None and sent >= reply.fail_after:
                request.transport.close()  # type: ignore[union-attr]
                return
            await self._pause(request, reply.delay)
            await response.write(self._frame({"content": token}))
        for position, (name, arguments) in enumerate(reply.tool_calls):
            await self._pause(request, reply.delay)
            call_id = f"call_{position}_{name}"
            await response.write(self._frame({"tool_calls": [{
                "index": position, "id": call_id, "type": "function",
                "function": {"name": name, "arguments": ""},
            }]}))
            middle = len(arguments) // 2
            for piece in (arguments[:middle], arguments[middle:]):
                await response.write(self._frame({"tool_calls": [{
                    "index": position, "function": {"arguments": piece},
                }]}))
        while reply.hold_open:
            await self._pause(request, 0.02)
        if reply.raw_choices:
            for choice in reply.raw_choices:
                await response.write(self._chunk([choice]))
        else:
            await response.write(self._frame({}, "tool_calls" if reply.tool_calls else "stop"))
        if reply.drop_after_finish:
            request.transport.close()  # type: ignore[union-attr]
            return
        if reply.usage:
            await response.write(self._chunk([], usage={
                "prompt_tokens": 10,
                "completion_tokens": len(reply.tokens),
                "total_tokens": 10 + len(reply.tokens),
            }))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()

    def _whole_completion(self, reply: ScriptedReply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(reply.tokens)}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{i}_{name}", "type": "function", "function": {"name": name, "arguments": args}}
                for i, (name, args) in enumerate(reply.tool_calls)
            ]
        return {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": len(reply.tokens),
                      "total_tokens": 10 + len(reply.tokens)},
        }
