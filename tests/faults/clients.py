"""Tools of the load faults (flood, slow watcher, many connections, churn): bare sockets, worker probes."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import websockets

from tests.servers import DaphneWorker

from .harness import FRAME_TIMEOUT


async def open_socket(worker: DaphneWorker, cookie: str, **options: Any) -> Any:
    """A bare websockets client of a logged-in user, nothing read yet."""
    return await websockets.connect(
        worker.ws_url, additional_headers={"Cookie": cookie, "Origin": worker.http_url},
        open_timeout=FRAME_TIMEOUT, max_size=None, **options)


async def read_frame(socket: Any, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(socket.recv(), timeout))


async def greeted(socket: Any) -> str:
    """'hello' if the socket got hello then rooms, else the close code it was refused with."""
    try:
        first = await read_frame(socket)
        assert first["type"] == "hello", first
        assert (await read_frame(socket))["type"] == "rooms"
        return "hello"
    except websockets.ConnectionClosed as closed:
        return str(closed.rcvd.code) if closed.rcvd is not None else "dropped"


async def healthz(worker: DaphneWorker) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FRAME_TIMEOUT)) as session:
        async with session.get(worker.http_url + "/healthz") as response:
            return response.status, await response.json()


def rss_kib(worker: DaphneWorker) -> int:
    """The worker process's resident memory (VmRSS), in KiB."""
    for line in Path(f"/proc/{worker.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def redis_subscriptions(redis_url: str) -> dict[bytes, int]:
    """The Redis pub/sub channels the workers listen on, with how many subscribers each: one per open
    connection's own channel, and per worker one per group (a room, a user, a stream's control
    group) with a member there."""
    import redis

    client = redis.Redis.from_url(redis_url)
    channels = client.pubsub_channels()
    return dict(client.pubsub_numsub(*channels)) if channels else {}
