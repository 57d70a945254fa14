"""An OpenAI-compatible model server for benchstream: numbered tokens stamped with their send time, as fast as it can or at a set rate."""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time
from typing import Any

from aiohttp import web

MODEL = "bench"
# A token is " w<seq>:<microseconds of CLOCK_MONOTONIC at send>". The clock is the machine's, so a
# client on the same machine can tell how long the token took to reach it; the number tells it
# which token it is, so that coalesced deltas still count token by token and a lost one shows.
TOKEN_PATTERN = re.compile(r"w(\d+):(\d+)")
PROMPT_PATTERN = re.compile(r"benchstream tokens=(\d+) rate=([\d.]+)")

_FRAME_HEAD = (
    'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":%d,"model":"' + MODEL + '",'
    '"choices":[{"index":0,"delta":{"content":"'
)
_FRAME_TAIL = '"},"finish_reason":null}]}\n\n'


def now_us() -> int:
    return time.monotonic_ns() // 1000


def bench_prompt(tokens: int, rate: float = 0) -> str:
    """The user message that asks this server for `tokens` tokens at `rate` per second (0: at once)."""
    return f"benchstream tokens={tokens} rate={rate:g}"


def parse_prompt(body: dict[str, Any]) -> tuple[int, float]:
    """(tokens, rate) asked for by the newest user message; an unknown prompt gets a short answer."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content") or ""
            if isinstance(content, list):
                content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
            found = PROMPT_PATTERN.search(content)
            if found:
                return int(found.group(1)), float(found.group(2))
            break
    return 5, 0.0


def _frame(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    tokens, rate = parse_prompt(body)
    created = int(time.time())
    if not body.get("stream"):
        text = "".join(f" w{seq}:{now_us()}" for seq in range(tokens))
        return web.json_response({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": created, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens},
        })
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    head = _FRAME_HEAD % created
    try:
        await response.write(_frame({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created,
                                     "model": MODEL, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                                         "content": ""}}]}))
        started = time.monotonic()
        for seq in range(tokens):
            if rate > 0:
                delay = started + seq / rate - time.monotonic()
                await asyncio.sleep(max(delay, 0))
            else:
                # Flat out, but one token at a time across all open streams: a stream that never
                # yields would send all its tokens before the next stream sent one.
                await asyncio.sleep(0)
            await response.write(f"{head} w{seq}:{now_us()}{_FRAME_TAIL}".encode())
        await response.write(_frame({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created,
                                     "model": MODEL, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        await response.write(_frame({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created,
                                     "model": MODEL, "choices": [], "usage": {
                                         "prompt_tokens": 10, "completion_tokens": tokens,
                                         "total_tokens": 10 + tokens}}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass  # the relay stopped reading (a cancelled answer): nothing more to send
    return response


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/chat/completions", chat_completions)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
