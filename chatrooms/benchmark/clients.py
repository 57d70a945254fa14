"""WebSocket clients for benchstream: each reads its frames as they come and tallies every token it receives, with its latency."""
from __future__ import annotations

import asyncio
import itertools
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .model_server import TOKEN_PATTERN, now_us

Frame = dict[str, Any]


class BenchError(Exception):
    """The server answered a benchmark's request with an error, or not at all."""


@dataclass(frozen=True)
class Account:
    username: str
    cookie: str | None  # a Cookie header holding a logged-in session; None for a server without logins


class StreamTally:
    """What one client received of one stream: which tokens, how late, and in how many frames."""

    __slots__ = ("seqs", "duplicates", "latencies_us", "first_at_us", "last_at_us", "frames", "replayed")

    def __init__(self) -> None:
        self.seqs: set[int] = set()
        self.duplicates = 0
        self.latencies_us: list[int] = []
        self.first_at_us: int | None = None
        self.last_at_us: int | None = None
        self.frames = 0
        self.replayed = 0

    def add_delta(self, delta: str, received_us: int, *, replay: bool) -> None:
        found = False
        for match in TOKEN_PATTERN.finditer(delta):
            found = True
            seq = int(match.group(1))
            if seq in self.seqs:
                self.duplicates += 1
                continue
            self.seqs.add(seq)
            if not replay:  # a replayed token was sent long ago: its latency means nothing
                self.latencies_us.append(received_us - int(match.group(2)))
        if found and not replay:
            if self.first_at_us is None:
                self.first_at_us = received_us
            self.last_at_us = received_us


class ChatClient:
    """One socket. Chunk frames are tallied by stream as they arrive; every other frame waits in an
    inbox for `wait_for`, stamped with the time it arrived."""

    _refs = itertools.count(1)

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.streams: defaultdict[str, StreamTally] = defaultdict(StreamTally)
        self.inbox: list[Frame] = []
        self.errors: list[Frame] = []
        self.closed = False
        self.failure: Exception | None = None
        self._arrived = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, ws_url: str, account: Account, *, origin: str, timeout: float = 60) -> ChatClient:
        client = cls(await open_socket(ws_url, account, origin=origin, timeout=timeout))
        await client.wait_for(lambda frame: frame["type"] == "hello", timeout)
        return client

    async def _read(self) -> None:
        try:
            async for text in self.socket:
                received = now_us()
                frame = json.loads(text)
                if frame.get("type") == "stream.chunk":
                    chunk, replay = frame["chunk"], frame.get("replay", False)
                    tally = self.streams[frame["streamId"]]
                    tally.frames += 1
                    tally.replayed += replay
                    if chunk.get("type") == "text-delta":
                        tally.add_delta(chunk["delta"], received, replay=replay)
                    continue
                frame["_receivedUs"] = received
                if frame.get("type") == "error":
                    self.errors.append(frame)
                self.inbox.append(frame)
                self._arrived.set()
        except ConnectionClosed:
            pass
        except Exception as error:  # a frame this client cannot read: the run must say so, not hang
            self.failure = error
        finally:
            self.closed = True
            self._arrived.set()

    async def send(self, frame: Frame) -> None:
        await self.socket.send(json.dumps(frame))

    async def wait_for(self, wanted: Callable[[Frame], bool], timeout: float = 60) -> Frame:
        """The first frame of the inbox that `wanted` accepts (taken out of it), waiting for it to come."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for position, frame in enumerate(self.inbox):
                if wanted(frame):
                    del self.inbox[position]
                    return frame
            if self.closed:
                raise BenchError(f"the socket closed first: {self.why_closed()}")
            self._arrived.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise BenchError(f"no awaited frame within {timeout:g} s ({self.why_closed()})")
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                continue

    def why_closed(self) -> str:
        socket = self.socket
        reason = f"close code {socket.close_code} {socket.close_reason!r}" if socket.close_code else "not closed"
        return f"{reason}; failure {self.failure!r}; last errors {self.errors[-3:]}"

    async def request(self, frame: Frame, timeout: float = 60) -> Frame:
        """Send a frame with a fresh `ref` and return the server's answer to it; an `error` raises."""
        ref = f"b{next(self._refs)}"
        await self.send({**frame, "ref": ref})
        answer = await self.wait_for(lambda candidate: candidate.get("ref") == ref, timeout)
        if answer["type"] == "error":
            raise BenchError(f"{frame['type']} refused: {answer}")
        return answer

    def drop_inbox(self) -> None:
        """Forget frames nobody waits for (room lists and the like), so that a long-lived client stays small."""
        self.inbox.clear()

    async def close(self) -> None:
        await self.socket.close()
        await self._reader


async def open_socket(ws_url: str, account: Account, *, origin: str, timeout: float = 60) -> ClientConnection:
    return await connect(
        ws_url, origin=origin, additional_headers={"Cookie": account.cookie} if account.cookie else None,
        # No compression: the server sides differ in what they offer, and the relay is what is measured.
        compression=None, ping_interval=None, max_size=2**24, max_queue=None, open_timeout=timeout,
    )


async def join_and_replay(ws_url: str, account: Account, *, origin: str, room_id: str,
                          timeout: float = 120) -> tuple[float, int, Frame]:
    """Join a room and read its replay as a lean client would: chunk frames are counted by a
    substring, not parsed, so that this client's own work weighs as little as it can on the time
    measured. (milliseconds from room.join to stream.replay_complete, chunk frames, that frame)"""
    async with await open_socket(ws_url, account, origin=origin) as socket:
        while json.loads(await socket.recv())["type"] != "hello":
            pass
        sent = now_us()
        await socket.send(json.dumps({"type": "room.join", "roomId": room_id}))
        replayed = 0
        async with asyncio.timeout(timeout):
            while True:
                text = await socket.recv()
                if '"stream.chunk"' in text:
                    replayed += 1
                elif '"stream.replay_complete"' in text:
                    return (now_us() - sent) / 1000, replayed, json.loads(text)


async def connect_all(ws_url: str, accounts: list[Account], *, origin: str, at_once: int = 50) -> list[ChatClient]:
    """One client per account, opened `at_once` at a time so that no handshake waits in a listen backlog."""
    clients: list[ChatClient] = []
    try:
        for first in range(0, len(accounts), at_once):
            batch = accounts[first:first + at_once]
            clients += await asyncio.gather(*(ChatClient.connect(ws_url, account, origin=origin) for account in batch))
    except BaseException:
        await close_all(clients)
        raise
    return clients


async def close_all(clients: list[ChatClient]) -> None:
    await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
