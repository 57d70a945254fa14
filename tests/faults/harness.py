"""The fault suite's tools: restartable Redis, a cluster of daphne workers, recording clients, invariants."""
from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from channels.db import database_sync_to_async

from chatrooms.models import Message
from streaming.models import Stream, StreamChunk
from tests.servers import DaphneWorker, free_port, scripted_worker_env
from tests.test_end_to_end import log_in
from tests.test_worker_shutdown import wait_for_chunks_stored

PASSWORD = "a-long-enough-password"
FRAME_TIMEOUT = 60  # a lost frame fails the test; it never hangs it
FINAL_STATUSES = {"complete", "aborted", "error", "interrupted"}


class RedisServer:
    """A redis-server of the test's own on a fixed port, so that it can be stopped and started again."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="chatrooms-fault-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        import redis

        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.workdir], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)  # polling a port that has no readiness event

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Cluster:
    """Daphne workers on the test database, one Redis and the scripted model server; stopped at the end."""

    def __init__(self, model_server: Any, redis: RedisServer | None) -> None:
        self.model_server = model_server
        self.redis = redis
        self.workers: list[DaphneWorker] = []
        # Workers write to files: a pipe that nobody reads while they run fills up (an outage's
        # tracebacks, the access log of many sockets) and then blocks the worker at its next line.
        self.log_dir = Path(tempfile.mkdtemp(prefix="chatrooms-fault-logs-"))

    def env(self, **extra: str) -> dict[str, str]:
        base = {"STREAM_HEARTBEAT_SECONDS": "1", "STREAM_STALE_SECONDS": "5"}
        if self.redis is not None:
            base["REDIS_URL"] = self.redis.url
        return scripted_worker_env(self.model_server, **{**base, **extra})

    def start_worker(self, port: int | None = None, daphne_args: tuple[str, ...] = (), **extra: str) -> DaphneWorker:
        """A worker with the cluster's environment plus `extra`; `daphne_args` go to daphne itself
        (after DAPHNE_OPTIONS, so they win), e.g. a shorter --ping-timeout."""
        log_path = self.log_dir / f"worker-{len(self.workers)}.log"
        worker = DaphneWorker(self.env(**extra), port, log_path=log_path)
        at = worker.argv.index("-b")
        worker.argv[at:at] = list(daphne_args)
        self.workers.append(worker)
        return worker.start()

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop(signal.SIGKILL)

    def close(self) -> None:
        self.stop_all()
        shutil.rmtree(self.log_dir, ignore_errors=True)


@dataclass
class Watcher:
    """A logged-in protocol client over a real socket. It keeps every frame, and every chunk it was
    shown by stream and index, so that a test can compare what a person saw with what was stored."""

    cookie: str
    name: str = "watcher"
    frames: list[dict[str, Any]] = field(default_factory=list)
    shown: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    duplicates: list[tuple[str, int]] = field(default_factory=list)
    done: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    socket: Any = None

    @classmethod
    async def log_in(cls, worker: DaphneWorker, username: str = "sam", name: str = "watcher") -> Watcher:
        cookie = await database_sync_to_async(log_in)(worker.http_url, username, PASSWORD)
        watcher = cls(cookie, name)
        await watcher.connect(worker)
        return watcher

    async def connect(self, worker: DaphneWorker) -> None:
        self.socket = await websockets.connect(
            worker.ws_url, additional_headers={"Cookie": self.cookie, "Origin": worker.http_url},
            open_timeout=FRAME_TIMEOUT, max_size=None)
        await self.until("rooms")

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
            self.socket = None

    async def send(self, frame: dict[str, Any]) -> None:
        await self.socket.send(json.dumps(frame))

    async def recv(self, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
        frame = json.loads(await asyncio.wait_for(self.socket.recv(), timeout))
        self.frames.append(frame)
        if frame["type"] == "stream.chunk":
            seen = self.shown.setdefault(frame["streamId"], {})
            if frame["index"] in seen:
                self.duplicates.append((frame["streamId"], frame["index"]))
            seen[frame["index"]] = frame["chunk"]
        elif frame["type"] == "stream.done":
            self.done.setdefault(frame["streamId"], []).append(frame)
        return frame

    async def until(self, frame_type: str, timeout: float = FRAME_TIMEOUT, **match: Any) -> list[dict[str, Any]]:
        """Frames up to and including the first of `frame_type` whose fields equal `match`."""
        frames = []
        while True:
            frame = await self.recv(timeout)
            frames.append(frame)
            if frame["type"] == frame_type and all(frame.get(k) == v for k, v in match.items()):
                return frames

    async def create_room(self, name: str) -> str:
        await self.send({"type": "room.create", "name": name})
        return (await self.until("room.created"))[-1]["room"]["id"]

    async def join(self, room_id: str, since: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        frame: dict[str, Any] = {"type": "room.join", "roomId": room_id}
        if since is not None:
            frame["since"] = since
        await self.send(frame)
        return await self.until("messages", roomId=room_id)

    async def until_text(self, stream_id: str | None, text: str, timeout: float = FRAME_TIMEOUT) -> None:
        """Read frames until this client has been shown at least `text` of a stream (the first one
        to start, when `stream_id` is None)."""
        while True:
            sid = stream_id or next(iter(self.shown), None)
            if sid is not None and text in self.text(sid):
                return
            await self.recv(timeout)

    def cursor(self, stream_id: str) -> dict[str, Any]:
        """The `since` this client would send: the last index of the unbroken run it holds."""
        seen = self.shown.get(stream_id, {})
        index = -1
        while index + 1 in seen:
            index += 1
        return {"streamId": stream_id, "index": index}

    def text(self, stream_id: str) -> str:
        seen = self.shown.get(stream_id, {})
        return "".join(seen[i].get("delta", "") for i in sorted(seen) if seen[i]["type"] == "text-delta")


async def room_watched_from(workers: list[DaphneWorker], name: str) -> tuple[str, list[Watcher]]:
    """A room made by the first of one watcher per worker ("on A", "on B", …), joined by them all."""
    watchers = [await Watcher.log_in(worker, name=f"on {chr(ord('A') + n)}") for n, worker in enumerate(workers)]
    room = await watchers[0].create_room(name)
    for watcher in watchers:
        await watcher.join(room)
    return room, watchers


async def start_answer(cluster: Cluster, sender: Watcher, room: str, reply: Any, *, request_id: str = "r",
                       seen_by: Watcher | None = None, until: str | None = None, stored: bool = False) -> str:
    """`sender` asks in `room` and the model answers with `reply`. Returns the stream's id once
    `seen_by` (default: the sender) has been shown `until` (default: all of the reply's tokens) and,
    with `stored`, once every chunk it was shown is in the database (past the flush window)."""
    watcher = seen_by or sender
    earlier = set(watcher.shown)
    cluster.model_server.enqueue(reply)
    await sender.send({"type": "chat.send", "roomId": room, "requestId": request_id, "text": "go"})
    while not set(watcher.shown) - earlier:
        await watcher.recv()
    stream_id = next(sid for sid in watcher.shown if sid not in earlier)
    await watcher.until_text(stream_id, until if until is not None else "".join(reply.tokens))
    if stored:
        await wait_for_chunks_stored(stream_id, max(watcher.shown[stream_id]) + 1)
    return stream_id


def stored_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(chunk.get("delta", "") for chunk in chunks if chunk["type"] == "text-delta")


@database_sync_to_async
def stream_record(stream_id: str) -> tuple[Stream, Message, list[tuple[int, dict[str, Any]]]]:
    stream = Stream.objects.get(pk=stream_id)
    message = Message.objects.get(stream=stream)
    chunks = [(index, json.loads(body)) for index, body in
              StreamChunk.objects.filter(stream=stream).order_by("index").values_list("index", "body")]
    return stream, message, chunks


async def wait_until_finished(stream_id: str, timeout: float = FRAME_TIMEOUT) -> Stream:
    """The stream once it has its final status (a stale stream is finished by a sweep, which has no
    event a test process can wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        stream = await database_sync_to_async(Stream.objects.get)(pk=stream_id)
        if stream.status in FINAL_STATUSES:
            return stream
        assert time.monotonic() < deadline, f"stream {stream_id} still {stream.status} after {timeout} s"
        await asyncio.sleep(0.1)


async def check_stream(stream_id: str, watchers: list[Watcher], *, status: str | set[str],
                       unstored_allowed: int = 0) -> str:
    """The invariants of one finished stream; returns its stored text.

    - it ended in one final status, on the stream and its message alike, and each watcher that was
      told so was told once, with the stored message;
    - its chunk indexes are 0, 1, 2, ... with no gap and no repeat;
    - every chunk a watcher was shown is stored, with the same content; only `unstored_allowed`
      chunks at the end may be missing (the flush window of a worker that was killed);
    - no watcher was shown a chunk twice; one that saw the end reconstructs the stored text.
    """
    stream, message, chunks = await stream_record(stream_id)
    wanted = {status} if isinstance(status, str) else status
    assert stream.status in wanted, f"stream ended {stream.status}, wanted {wanted}"
    assert message.status == stream.status
    indexes = [index for index, _ in chunks]
    assert indexes == list(range(len(indexes))), f"stored indexes are not contiguous: {indexes}"
    bodies = dict(chunks)
    text = stored_text([chunk for _, chunk in chunks])
    assert message.content == text
    for watcher in watchers:
        assert not [d for d in watcher.duplicates if d[0] == stream_id], f"{watcher.name} was shown a chunk twice"
        shown = watcher.shown.get(stream_id, {})
        unstored = sorted(index for index in shown if index not in bodies)
        assert len(unstored) <= unstored_allowed, f"{watcher.name} was shown chunks never stored: {unstored}"
        assert all(index > indexes[-1] for index in unstored) if indexes else True
        assert all(shown[index] == bodies[index] for index in shown if index in bodies), \
            f"{watcher.name} was shown chunks that differ from the stored ones"
        finals = watcher.done.get(stream_id, [])
        assert len(finals) <= 1, f"{watcher.name} got {len(finals)} stream.done frames"
        if finals:
            assert finals[0]["status"] == stream.status
            assert finals[0]["message"]["content"] == text
            assert watcher.cursor(stream_id)["index"] >= len(indexes) - 1, \
                f"{watcher.name} saw stream.done without every stored chunk"
            if not unstored_allowed:
                assert watcher.text(stream_id) == text
    return text
