"""Fault 1: a worker killed (SIGKILL) mid-stream, then restarted on its port."""
from __future__ import annotations

import signal

from chatrooms.scripted_model_server import ScriptedReply

from .harness import Watcher, check_stream, room_watched_from, start_answer, wait_until_finished


async def test_a_worker_killed_mid_stream_and_restarted(cluster, sam):
    worker_a, worker_b = cluster.start_worker(), cluster.start_worker()
    room, (on_a, on_b) = await room_watched_from([worker_a, worker_b], "Killed")
    quiet_room = await on_b.create_room("Elsewhere")
    other = await Watcher.log_in(worker_b, name="other room")
    await other.join(quiet_room)

    tokens = [f"w{i} " for i in range(40)]
    stream_id = await start_answer(cluster, on_a, room, ScriptedReply(tokens=tokens, hold_open=True),
                                   seen_by=on_b, stored=True)
    cluster.workers[0].stop(signal.SIGKILL)

    # The surviving worker's sweep finds the stream stale and finishes it; its viewer is told.
    await on_b.until("stream.done", streamId=stream_id)
    await wait_until_finished(stream_id)
    text = await check_stream(stream_id, [on_a, on_b], status="interrupted")
    assert text == "".join(tokens)

    # The killed worker comes back on its port; the client reconnects and sees the stored answer.
    restarted = cluster.start_worker(port=worker_a.port)
    await on_a.connect(restarted)
    messages = (await on_a.join(room))[-1]["messages"]
    assert messages[-1]["status"] == "interrupted" and messages[-1]["content"] == text

    # The room chats again, on the restarted worker: the whole answer reaches its viewers on both
    # workers and is stored.
    again = [f"a{i} " for i in range(20)]
    again_id = await start_answer(cluster, on_a, room, ScriptedReply(tokens=again), request_id="again")
    for watcher in (on_a, on_b):
        done = (await watcher.until("stream.done", streamId=again_id))[-1]
        assert done["status"] == "complete" and done["message"]["content"] == "".join(again), watcher.name
    await wait_until_finished(again_id)
    assert await check_stream(again_id, [on_a, on_b], status="complete") == "".join(again)

    # The other room was not disturbed: it chats as before.
    await other.send({"type": "chat.send", "roomId": quiet_room, "requestId": "after", "text": "still here"})
    done = (await other.until("stream.done"))[-1]
    assert done["status"] == "complete" and done["message"]["content"] == "Echo: still here"
    for watcher in (on_a, on_b, other):
        await watcher.close()
