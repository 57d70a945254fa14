"""Fault 4: a client that drops its socket in the middle of a replay and reconnects with its last index."""
from __future__ import annotations

from chatrooms.scripted_model_server import ScriptedReply

from .harness import Watcher, check_stream, start_answer

TOKENS = 3000


async def read_replay_part(watcher: Watcher, stream_id: str, chunks: int) -> None:
    """Read `stream.resuming`, then only `chunks` replayed chunks: the rest stays unread on the socket."""
    await watcher.until("stream.resuming", streamId=stream_id)
    read = 0
    while read < chunks:
        frame = await watcher.recv()
        assert frame["type"] == "stream.chunk" and frame["replay"] is True, frame
        read += 1


async def drop(watcher: Watcher) -> None:
    """Cut the TCP connection without a closing handshake, as a phone going through a tunnel does."""
    watcher.socket.transport.abort()
    await watcher.socket.wait_closed()
    watcher.socket = None


async def start_long_stream(cluster, sender: Watcher, room: str) -> tuple[ScriptedReply, str]:
    """A live stream with its TOKENS text tokens stored and its model response still open. The tokens
    come a millisecond apart, so that most are chunks of their own (deltas that arrive within one turn
    of the worker's event loop are sent as one chunk)."""
    reply = ScriptedReply(tokens=[f"t{i} " for i in range(TOKENS)], delay=0.001, hold_open=True)
    return reply, await start_answer(cluster, sender, room, reply, request_id="long", stored=True)


async def test_a_client_dropped_mid_replay_resumes_from_its_last_index(cluster, sam):
    worker_a, worker_b = cluster.start_worker(), cluster.start_worker()
    sender = await Watcher.log_in(worker_a, name="sender")
    room = await sender.create_room("Replayed")
    await sender.join(room)
    reply, stream_id = await start_long_stream(cluster, sender, room)

    # A second client joins on B and reads a part of the replay, then its socket is cut.
    late = await Watcher.log_in(worker_b, name="late")
    stored = max(sender.shown[stream_id]) + 1
    assert stored > 300, f"only {stored} chunks: the test needs a long replay"
    first_part, second_part = stored // 4, stored // 3
    await late.join(room)
    await read_replay_part(late, stream_id, first_part)
    await drop(late)
    first_cursor = late.cursor(stream_id)
    assert first_cursor["index"] == first_part - 1

    # It reconnects to the other worker with its cursor, and is cut again mid-replay.
    await late.connect(worker_a)
    await late.join(room, since=first_cursor)
    await read_replay_part(late, stream_id, second_part)
    await drop(late)
    second_cursor = late.cursor(stream_id)
    assert second_cursor["index"] == first_part + second_part - 1

    # Back on B: the rest of the replay, then the live end of the stream.
    await late.connect(worker_b)
    await late.join(room, since=second_cursor)
    complete = (await late.until("stream.replay_complete", streamId=stream_id))[-1]
    assert complete["lastIndex"] >= stored - 1
    reply.hold_open = False  # the model ends its answer
    for watcher in (sender, late):
        await watcher.until("stream.done", streamId=stream_id)

    text = await check_stream(stream_id, [sender, late], status="complete")
    assert text == "".join(f"t{i} " for i in range(TOKENS))
    assert late.text(stream_id) == text
    assert len(late.done[stream_id]) == 1
    for watcher in (sender, late):
        await watcher.close()


async def test_a_client_dropped_right_after_resuming_replays_from_the_start(cluster, sam):
    """Cut before any replayed chunk: its cursor is -1, and `since` with index -1 replays everything."""
    worker_a, worker_b = cluster.start_worker(), cluster.start_worker()
    sender = await Watcher.log_in(worker_a, name="sender")
    room = await sender.create_room("Replayed early")
    await sender.join(room)
    reply, stream_id = await start_long_stream(cluster, sender, room)

    late = await Watcher.log_in(worker_b, name="late")
    await late.join(room)
    await read_replay_part(late, stream_id, 0)
    await drop(late)
    assert late.cursor(stream_id) == {"streamId": stream_id, "index": -1}

    await late.connect(worker_a)
    await late.join(room, since=late.cursor(stream_id))
    await late.until("stream.replay_complete", streamId=stream_id)
    reply.hold_open = False
    for watcher in (sender, late):
        await watcher.until("stream.done", streamId=stream_id)
    text = await check_stream(stream_id, [sender, late], status="complete")
    assert late.text(stream_id) == text
    for watcher in (sender, late):
        await watcher.close()
