"""Fault 6: malformed and oversized frames on the real server path (daphne, autobahn, the app) during a live stream.

The full tables of bad frames and their answers are consumer-level tests: tests/chatrooms/test_bad_input.py
(every field of every frame), test_frame_limits.py (every field bounded) and test_fuzz_frames.py (random
frames). Here a few of each kind go through a real daphne worker, next to a stream that must not notice.
"""
from __future__ import annotations

import json
from pathlib import Path

import websockets
from channels.db import database_sync_to_async

from chatrooms.models import Message
from chatrooms.protocol import FRAME_MAX_BYTES
from chatrooms.scripted_model_server import ScriptedReply
from tests.servers import ROOT

from .harness import Watcher, check_stream

MIB = 1024 * 1024
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_ABNORMAL = 1006  # no close frame: the TCP connection was dropped


def test_daphne_is_pinned_to_a_version_that_bounds_frames():
    """daphne 4.2.2 passes --websocket-max-message-size/--websocket-max-frame-size (1 MiB) to autobahn."""
    pyproject = Path(ROOT, "pyproject.toml").read_text()
    assert '"daphne>=4.2.2,<5"' in pyproject


async def refused_by_daphne(watcher: Watcher, payload: str | bytes) -> int:
    """Send one frame over 1 MiB: the connection must end without a frame from the app. Returns the
    close code the client saw: autobahn (failByDrop, daphne's setting) drops the TCP connection without
    a close frame as soon as it reads the frame's header, so the client sees 1006, abnormal closure."""
    try:
        await watcher.socket.send(payload)
        frame = await watcher.recv(timeout=30)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else CLOSE_ABNORMAL
    raise AssertionError(f"the app answered a frame over 1 MiB: {frame}")


async def answered(watcher: Watcher, payload: str | bytes) -> dict:
    """Send one frame; the `error` it is answered with (stream frames in between are kept by the watcher)."""
    await watcher.socket.send(payload)
    return (await watcher.until("error"))[-1]


async def message_count() -> int:
    return await database_sync_to_async(Message.objects.count)()


async def test_oversized_and_malformed_frames_leave_the_stream_and_the_worker_unharmed(cluster, sam):
    worker = cluster.start_worker()
    sender = await Watcher.log_in(worker, name="sender")
    room = await sender.create_room("Frames")
    await sender.join(room)
    bystander = await Watcher.log_in(worker, name="bystander")
    await bystander.join(room)

    reply = ScriptedReply(tokens=[f"f{i} " for i in range(200)], delay=0.005, hold_open=True)
    cluster.model_server.enqueue(reply)
    await sender.send({"type": "chat.send", "roomId": room, "requestId": "live", "text": "go"})
    await bystander.until_text(None, "f10 ")
    stream_id = next(iter(bystander.shown))
    before = await message_count()

    # Over 1 MiB: autobahn refuses it before daphne hands anything to the app (docs/protocol.md, Connection).
    huge_text = json.dumps({"type": "chat.send", "roomId": room, "requestId": "huge", "text": "x" * (2 * MIB)})
    for payload in (huge_text, b"\x00" * (2 * MIB)):
        prober = await Watcher.log_in(worker, name="prober")
        assert await refused_by_daphne(prober, payload) in (CLOSE_ABNORMAL, CLOSE_MESSAGE_TOO_BIG)
        assert not [f for f in prober.frames if f["type"] not in ("hello", "rooms")]

    # Between 64 KiB and 1 MiB: the app's own `too_large`, and the socket stays open.
    prober = await Watcher.log_in(worker, name="prober")
    for size in (FRAME_MAX_BYTES + 1, 900 * 1024):
        frame = json.dumps({"type": "chat.send", "roomId": room, "requestId": "big", "ref": "big",
                            "text": "y" * size})
        error = await answered(prober, frame)
        assert error["code"] == "too_large", error
    await prober.join(room)  # still open, and still served
    await prober.until("stream.replay_complete", streamId=stream_id)

    # Malformed frames from a viewer of the streaming room, between its chunks: each its documented error.
    malformed = [
        ("not JSON {", "bad_request"),
        (b'{"type": "room.join"}', "bad_request"),  # binary
        ("[1, 2, 3]", "bad_request"),
        ('"a string"', "bad_request"),
        ("NaN", "bad_request"),
        ('{"ref": "no-type"}', "bad_request"),
        ('{"type": "room.explode", "ref": "unknown"}', "unknown_type"),
        (json.dumps({"type": "room.join", "roomId": 5, "ref": "ill-typed"}), "bad_request"),
        (json.dumps({"type": "chat.send", "roomId": room, "requestId": "x" * 65, "text": "hi"}), "bad_request"),
        (json.dumps({"type": "chat.send", "roomId": room, "requestId": "dup", "text": "hi"}), "busy"),
    ]
    for payload, code in malformed:
        error = await answered(bystander, payload)
        assert error["code"] == code, (payload, error)
        frame = json.loads(payload) if isinstance(payload, str) and payload.startswith("{") else {}
        if isinstance(frame.get("ref"), str):
            assert error.get("ref") == frame["ref"]

    # The stream went on through all of it; every viewer, the late prober too, gets it whole.
    reply.hold_open = False
    for watcher in (sender, bystander, prober):
        await watcher.until("stream.done", streamId=stream_id)
    text = await check_stream(stream_id, [sender, bystander, prober], status="complete")
    assert text == "".join(f"f{i} " for i in range(200))
    assert await message_count() == before  # nothing of the refused frames was stored
    for watcher in (sender, bystander, prober):
        await watcher.close()
