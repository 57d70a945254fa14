"""benchstream's baselines: a minimal WebSocket relay of a model's stream, reading the SSE itself (A), through litellm (B), or litellm's provider stream as the app does (C)."""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection, broadcast, serve

from .model_server import MODEL


# --source: the baseline's name and what it is.
SOURCES = {
    "sse": ("A", "A: minimal relay, own SSE parser"),
    "litellm": ("B", "B: minimal relay through litellm"),
    "litellm-provider": ("C", "C: minimal relay, litellm's provider stream (as the app reads it)"),
}


class DeltaSource(Protocol):
    """Where a baseline reads the model's text deltas from, a list of them at a time."""

    def deltas(self, text: str) -> AsyncIterator[list[str]]: ...

    async def close(self) -> None: ...


class Room:
    """Who watches a room, and the chunks of its live stream (kept for a viewer who joins late)."""

    def __init__(self, room_id: str) -> None:
        self.id = room_id
        self.viewers: set[ServerConnection] = set()
        self.stream_id: str | None = None
        self.request_id = ""
        self.chunks: list[str] = []


class Outbox:
    """Deltas of one stream, sent as one frame per turn of the event loop: whatever arrived while the
    relay was busy goes out together, so a fast model costs few frames."""

    def __init__(self, room: Room) -> None:
        self.room = room
        self.pending: list[str] = []
        self._scheduled = False

    def extend(self, deltas: list[str]) -> None:
        self.pending.extend(deltas)
        if not self._scheduled and self.pending:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self.pending:
            return
        room = self.room
        body = json.dumps({"type": "text-delta", "id": "text-1", "delta": "".join(self.pending)},
                          separators=(",", ":"))
        self.pending = []
        index = len(room.chunks)
        room.chunks.append(body)
        broadcast(room.viewers, chunk_frame(room, index, body, replay=False))


def chunk_frame(room: Room, index: int, body: str, *, replay: bool) -> str:
    head = json.dumps({"type": "stream.chunk", "roomId": room.id, "requestId": room.request_id,
                       "streamId": room.stream_id, "index": index})
    tail = ', "replay": true}' if replay else "}"
    return f'{head[:-1]}, "chunk": {body}{tail}'


class SseSource:
    """A: the model's SSE read and parsed here; each network read yields the deltas it completed."""

    def __init__(self, model_url: str) -> None:
        self.model_url = model_url
        self._session: Any = None

    async def deltas(self, text: str) -> AsyncIterator[list[str]]:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": text}]}
        async with self._session.post(f"{self.model_url}/chat/completions", json=body) as response:
            buffer = b""
            async for data in response.content.iter_any():
                buffer += data
                *events, buffer = buffer.split(b"\n\n")
                found = []
                for event in events:
                    if not event.startswith(b"data: ") or event == b"data: [DONE]":
                        continue
                    choices = json.loads(event[6:]).get("choices") or []
                    content = choices[0].get("delta", {}).get("content") if choices else None
                    if content:
                        found.append(content)
                if found:
                    yield found

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class LitellmSource:
    """B: the same stream through litellm.acompletion(stream=True), configured as the app configures it.

    C (`provider_stream`): the same call, its chunks read as the app reads an OpenAI-compatible
    server's (`chatrooms.assistant.model_chunks`): the openai SDK's stream under litellm's wrapper.
    What any relay that reaches the model through litellm pays at the least.
    """

    def __init__(self, model_url: str, *, provider_stream: bool = False) -> None:
        self.model_url = model_url
        self.provider_stream = provider_stream
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price list from the network
        import litellm

        # As chatrooms.llm.get_litellm() sets it up, so that B is the library as the app uses it.
        litellm.suppress_debug_info = True
        litellm.telemetry = False
        litellm.disable_hf_tokenizer_download = True
        litellm.disable_aiohttp_transport = True
        self.litellm = litellm

    async def deltas(self, text: str) -> AsyncIterator[list[str]]:
        response = await self.litellm.acompletion(
            model=f"openai/{MODEL}", api_base=self.model_url, api_key="k", max_retries=0, stream=True,
            stream_options={"include_usage": True}, messages=[{"role": "user", "content": text}],
        )
        chunks = response.completion_stream if self.provider_stream else response
        try:
            async for part in chunks:
                if part.choices and part.choices[0].delta.content:
                    yield [part.choices[0].delta.content]
        finally:
            await response.aclose()

    async def close(self) -> None:
        """litellm keeps its clients for the life of the process."""


class BaselineRelay:
    """The relay: rooms by id, each with its viewers and at most one live stream.

    It speaks just enough of the chat protocol for benchstream's clients (hello, room.create,
    room.share, room.join with replay, chat.send, bench.seed, stream.* frames) and nothing else: no
    Django, no database, no authentication, no channel layer. Every room keeps its live stream's
    chunks in memory for a viewer who joins late.
    """

    def __init__(self, source: DeltaSource) -> None:
        self.source = source
        self.rooms: dict[str, Room] = {}
        self._room_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, socket: ServerConnection) -> None:
        joined: Room | None = None
        await socket.send(json.dumps({"type": "hello", "user": {"id": "0", "username": "baseline"}, "protocol": 1,
                                      "models": [{"id": MODEL, "label": MODEL}]}))
        try:
            async for text in socket:
                frame = json.loads(text)
                kind, ref = frame.get("type"), frame.get("ref")
                if kind == "room.create":
                    room = self._new_room()
                    await socket.send(json.dumps({"type": "room.created", "room": {"id": room.id}, "ref": ref}))
                elif kind == "room.share":
                    await socket.send(json.dumps({"type": "ack", "ref": ref}))
                elif kind == "room.join":
                    joined = await self._join(socket, joined, frame["roomId"], ref)
                elif kind == "chat.send":
                    if joined is None or joined.id != frame["roomId"]:
                        joined = await self._join(socket, joined, frame["roomId"], None)
                    self._start_stream(joined, frame["requestId"], frame["text"])
                elif kind == "bench.seed":
                    room = self._seeded_room(int(frame["chunks"]))
                    await socket.send(json.dumps({"type": "ack", "roomId": room.id, "ref": ref}))
                else:
                    await socket.send(json.dumps({"type": "error", "code": "bad_request", "ref": ref}))
        finally:
            if joined is not None:
                joined.viewers.discard(socket)

    def _new_room(self) -> Room:
        room = Room(str(next(self._room_ids)))
        self.rooms[room.id] = room
        return room

    async def _join(self, socket: ServerConnection, previous: Room | None, room_id: str, ref: str | None) -> Room:
        if previous is not None:
            previous.viewers.discard(socket)
        room = self.rooms[room_id]
        room.viewers.add(socket)
        await socket.send(json.dumps({"type": "messages", "roomId": room.id, "messages": [], "ref": ref}))
        if room.stream_id is not None:
            await socket.send(json.dumps({"type": "stream.resuming", "roomId": room.id, "requestId": room.request_id,
                                          "streamId": room.stream_id}))
            for index, body in enumerate(list(room.chunks)):
                await socket.send(chunk_frame(room, index, body, replay=True))
            await socket.send(json.dumps({"type": "stream.replay_complete", "roomId": room.id,
                                          "streamId": room.stream_id, "lastIndex": len(room.chunks) - 1}))
        return room

    def _seeded_room(self, chunks: int) -> Room:
        """A room whose stream is live with `chunks` chunks already made, for the replay measurement."""
        room = self._new_room()
        room.stream_id, room.request_id = str(uuid.uuid4()), "replay"
        room.chunks = [json.dumps({"type": "text-delta", "id": "text-1", "delta": f" w{index}:0"},
                                  separators=(",", ":")) for index in range(chunks)]
        return room

    def _start_stream(self, room: Room, request_id: str, text: str) -> None:
        task = asyncio.get_running_loop().create_task(self._relay(room, request_id, text))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, room: Room, request_id: str, text: str) -> None:
        room.stream_id, room.request_id, room.chunks = str(uuid.uuid4()), request_id, []
        broadcast(room.viewers, json.dumps({"type": "stream.start", "roomId": room.id, "requestId": request_id,
                                            "streamId": room.stream_id, "messageId": "0"}))
        outbox = Outbox(room)
        status = "complete"
        try:
            async for deltas in self.source.deltas(text):
                outbox.extend(deltas)
        except Exception:
            status = "error"
        outbox.flush()
        broadcast(room.viewers, json.dumps({"type": "stream.done", "roomId": room.id, "requestId": request_id,
                                            "streamId": room.stream_id, "status": status,
                                            "lastIndex": len(room.chunks) - 1}))
        room.stream_id = None


async def run(source_name: str, port: int, model_url: str) -> None:
    source: DeltaSource = (SseSource(model_url) if source_name == "sse"
                           else LitellmSource(model_url, provider_stream=source_name == "litellm-provider"))
    relay = BaselineRelay(source)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    async with serve(relay.handle, "127.0.0.1", port, compression=None, ping_interval=None, max_size=2**20,
                     backlog=1024):
        await stopped.wait()
    await source.close()


def main() -> None:
    """python -m chatrooms.benchmark.baseline_relay --source sse|litellm|litellm-provider --port P --model-url URL"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", choices=sorted(SOURCES), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-url", required=True, help="the model server's base URL, ending in /v1")
    arguments = parser.parse_args()
    asyncio.run(run(arguments.source, arguments.port, arguments.model_url))


if __name__ == "__main__":
    main()
