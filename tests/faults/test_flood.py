"""Fault 7: a client flooding frames, a watcher that stops reading, and 1,000 connections at once."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import statistics
import time

import websockets
from channels.db import database_sync_to_async

from chatrooms.models import Message
from chatrooms.scripted_model_server import ScriptedReply
from tests.factories import make_user

from .clients import healthz, rss_kib
from .harness import PASSWORD, Watcher, check_stream

RATE_CHAT_PER_MINUTE = 30  # the default (chatrooms/limits.py, settings)


async def watch_with_gaps(watcher: Watcher) -> list[float]:
    """Read one stream to its stream.done; the seconds between successive live chunks."""
    arrivals: list[float] = []
    while True:
        frame = await watcher.recv()
        if frame["type"] == "stream.chunk":
            arrivals.append(time.monotonic())
        if frame["type"] == "stream.done":
            return [b - a for a, b in zip(arrivals, arrivals[1:])]


async def test_a_flooding_client_is_limited_and_others_stream_on(cluster, sam):
    await database_sync_to_async(make_user)("bob", PASSWORD)
    worker = cluster.start_worker()
    flooder = await Watcher.log_in(worker, name="flooder")
    flood_room = await flooder.create_room("Flooded")
    await flooder.join(flood_room)
    other = await Watcher.log_in(worker, username="bob", name="bob")
    other_room = await other.create_room("Elsewhere")
    await other.join(other_room)
    # A first answer warms the worker up (its first litellm call imports litellm: seconds of CPU).
    await other.send({"type": "chat.send", "roomId": other_room, "requestId": "warm", "text": "warm up"})
    await other.until("stream.done")

    # The flood: chat.send first (limited), then cheap frames, as fast as the socket takes them.
    sends = [{"type": "chat.send", "roomId": flood_room, "requestId": f"flood-{i}", "text": "more", "ref": f"c{i}"}
             for i in range(200)]
    cheap = [{"type": "room.join", "roomId": flood_room, "ref": f"j{i}"} if i % 4 == 0
             else {"type": "ping", "ref": f"p{i}"} for i in range(5000)]
    frames = [json.dumps(f) for f in [*sends, *cheap, {"type": "ping", "ref": "end"}]]
    cluster.model_server.enqueue(ScriptedReply(tokens=[f"o{i} " for i in range(300)], delay=0.01))
    await other.send({"type": "chat.send", "roomId": other_room, "requestId": "calm", "text": "go"})
    await other.until("stream.start")
    watching = asyncio.ensure_future(watch_with_gaps(other))

    started = time.monotonic()
    answers: dict[str, dict] = {}

    async def read_answers() -> None:
        while "end" not in answers:
            frame = await flooder.recv()
            if "ref" in frame:
                answers[frame["ref"]] = frame

    reading = asyncio.ensure_future(read_answers())
    for frame in frames:
        await flooder.socket.send(frame)
    sent_seconds = time.monotonic() - started
    await asyncio.wait_for(reading, 120)
    flood_seconds = time.monotonic() - started
    gaps = await asyncio.wait_for(watching, 60)

    # Every cheap frame was answered; chat.send was refused beyond the limits, and nothing more was stored.
    assert all(answers[f"p{i}"]["code"] == "unknown_type" for i in range(5000) if i % 4)
    assert all(answers[f"j{i}"]["type"] == "messages" for i in range(0, 5000, 4))
    refusals = {ref: a["code"] for ref, a in answers.items() if ref.startswith("c")}
    accepted = [i for i in range(200) if f"c{i}" not in refusals]
    assert set(refusals.values()) <= {"rate_limited", "busy"}
    assert 1 <= len(accepted) <= 2 * RATE_CHAT_PER_MINUTE  # a flood may straddle two minutes of the clock
    assert sum(code == "rate_limited" for code in refusals.values()) >= 200 - 2 * RATE_CHAT_PER_MINUTE
    users = await database_sync_to_async(Message.objects.filter(room_id=flood_room, role="user").count)()
    assert users == len(accepted)

    # The other user's answer went on, whole, with no long stall.
    other_stream = list(other.shown)[-1]
    await check_stream(other_stream, [other], status="complete")
    status, _ = await healthz(worker)
    assert status == 200
    print(f"flood: {len(frames)} frames sent in {sent_seconds:.1f} s, all answered in {flood_seconds:.1f} s; "
          f"{len(accepted)} chat.send accepted; other room's gaps: median {statistics.median(gaps) * 1000:.0f} ms, "
          f"max {max(gaps) * 1000:.0f} ms")
    assert max(gaps) < 2.0
    for watcher in (flooder, other):
        await watcher.close()


# -- a watcher that stops reading ---------------------------------------------------------------

PING_INTERVAL, PING_TIMEOUT = 2, 3  # daphne's --ping-interval/--ping-timeout for this test (production: 20/30)


def masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def stalled_socket(worker, cookie: str, room: str) -> socket.socket:
    """A WebSocket client on a bare TCP socket with a 4 KiB receive buffer: it opens, joins the room,
    and never reads again (nor answers a ping)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", worker.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws/chat/ HTTP/1.1\r\nHost: 127.0.0.1:{worker.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Origin: {worker.http_url}\r\nCookie: {cookie}\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)  # byte by byte: nothing of the frames after the headers is read
    assert response.startswith(b"HTTP/1.1 101"), response
    sock.sendall(masked_text_frame(json.dumps({"type": "room.join", "roomId": room})))
    return sock


async def disconnected_at(worker, client_port: int, timeout: float) -> float | None:
    """When daphne logged the stalled client's disconnect (its access log names the client's port; the
    drop has no event a test can see otherwise, so this polls the log)."""
    pattern = re.compile(rf"127\.0\.0\.1:{client_port} .*WSDISCONNECT")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pattern.search(worker.log_path.read_text(errors="replace")):
            return time.monotonic()
        await asyncio.sleep(0.25)
    return None


async def test_a_watcher_that_stops_reading_is_dropped_and_the_others_lose_nothing(cluster, sam):
    worker = cluster.start_worker(daphne_args=(
        "--ping-interval", str(PING_INTERVAL), "--ping-timeout", str(PING_TIMEOUT)))
    sender = await Watcher.log_in(worker, name="sender")
    room = await sender.create_room("Stalled")
    await sender.join(room)
    healthy = await Watcher.log_in(worker, name="healthy")
    await healthy.join(room)
    stalled = await asyncio.to_thread(stalled_socket, worker, sender.cookie, room)
    stalled_port = stalled.getsockname()[1]
    rss_before = rss_kib(worker)

    tokens = [f"{'s' * 40}{i} " for i in range(20000)]  # ~250 bytes a frame, ~5 MB a viewer
    cluster.model_server.enqueue(ScriptedReply(tokens=tokens, delay=0.0005))
    started = time.monotonic()
    await sender.send({"type": "chat.send", "roomId": room, "requestId": "fast", "text": "go"})
    watching = [asyncio.ensure_future(w.until("stream.done")) for w in (sender, healthy)]
    dropped = await disconnected_at(worker, stalled_port, timeout=60)
    rss_at_drop = rss_kib(worker)
    await asyncio.wait_for(asyncio.gather(*watching), 120)
    rss_after = rss_kib(worker)
    stalled.close()

    stream_id = next(iter(healthy.shown))
    await check_stream(stream_id, [sender, healthy], status="complete")
    assert dropped is not None, "the stalled socket was never dropped"
    drop_seconds = dropped - started
    print(f"slow watcher: dropped {drop_seconds:.1f} s after the stream began; RSS KiB before {rss_before}, "
          f"at the drop {rss_at_drop}, after {rss_after}")
    assert drop_seconds < PING_INTERVAL + PING_TIMEOUT + 2 + 5  # the check runs every 2 s; slack for load
    status, _ = await healthz(worker)
    assert status == 200
    for watcher in (sender, healthy):
        await watcher.close()


# -- 1,000 connections --------------------------------------------------------------------------

CONNECTIONS = 1000


async def test_a_thousand_connections_at_once(cluster, sam):
    worker = cluster.start_worker(SOCKETS_PER_USER=str(CONNECTIONS + 10))  # DAPHNE_OPTIONS
    sender = await Watcher.log_in(worker, name="sender")
    room = await sender.create_room("Crowded")
    await sender.join(room)

    async def one(n: int) -> Watcher | str:
        watcher = Watcher(sender.cookie, f"crowd {n}")
        try:
            await watcher.connect(worker)
        except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed, TimeoutError) as error:
            return f"{type(error).__name__}: {error}"
        return watcher

    # All at once, as after a worker restart. With daphne's default --websocket_connect_timeout (5 s)
    # 64 of 1,000 got in here and the rest were dropped mid-handshake (DAPHNE_OPTIONS sets 60 s).
    started = time.monotonic()
    crowd = await asyncio.gather(*(one(n) for n in range(CONNECTIONS)))
    all_hello = time.monotonic() - started
    greeted = [w for w in crowd if isinstance(w, Watcher)]
    refused = [w for w in crowd if not isinstance(w, Watcher)]
    assert len(greeted) == CONNECTIONS, (len(refused), refused[:3])
    status, body = await healthz(worker)
    assert status == 200, body

    # Fifty of them watch an answer; it reaches each of them whole.
    viewers = greeted[:50]
    await asyncio.gather(*(v.join(room) for v in viewers))
    cluster.model_server.enqueue(ScriptedReply(tokens=[f"k{i} " for i in range(200)], delay=0.002))
    await sender.send({"type": "chat.send", "roomId": room, "requestId": "crowd", "text": "go"})
    await asyncio.gather(*(v.until("stream.done") for v in [sender, *viewers]))
    stream_id = next(iter(sender.shown))
    await check_stream(stream_id, [sender, *viewers], status="complete")
    rss = rss_kib(worker)
    status, body = await healthz(worker)
    assert status == 200, body
    print(f"1,000 connections: all had hello and rooms after {all_hello:.1f} s; worker RSS {rss} KiB")
    await asyncio.gather(*(w.close() for w in greeted), sender.close())
