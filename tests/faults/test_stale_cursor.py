"""Fault 5: a stale or foreign cursor gets an explicit `stale_cursor` and the room afresh, never a partial replay."""
from __future__ import annotations

import uuid

from chatrooms.scripted_model_server import ScriptedReply

from .harness import Watcher, check_stream, start_answer

TOKENS = [f"c{i} " for i in range(30)]


async def rejoin(watcher: Watcher, worker, room: str, since: dict) -> list[dict]:
    """A fresh socket joins with `since`; the frames up to the end of the replay."""
    await watcher.close()
    await watcher.connect(worker)
    await watcher.send({"type": "room.join", "roomId": room, "since": since, "ref": "j"})
    return await watcher.until("stream.replay_complete")


def replayed_text(frames: list[dict]) -> str:
    return "".join(f["chunk"].get("delta", "") for f in frames
                   if f["type"] == "stream.chunk" and f["chunk"]["type"] == "text-delta")


async def test_cursors_that_cannot_be_true_get_stale_cursor_and_a_full_replay(cluster, sam):
    worker_a, worker_b = cluster.start_worker(), cluster.start_worker()
    owner = await Watcher.log_in(worker_a, name="owner")
    room, other_room = await owner.create_room("Cursors"), await owner.create_room("Other")
    await owner.join(other_room)
    cluster.model_server.enqueue(ScriptedReply(tokens=["elsewhere"]))
    await owner.send({"type": "chat.send", "roomId": other_room, "requestId": "o", "text": "hi"})
    foreign_stream = (await owner.until("stream.done"))[-1]["streamId"]
    await owner.join(room)
    stream_id = await start_answer(cluster, owner, room, ScriptedReply(tokens=TOKENS, hold_open=True),
                                   request_id="live", stored=True)
    stored_through = owner.cursor(stream_id)["index"]

    reader = await Watcher.log_in(worker_b, name="reader")
    cases = {
        "beyond the head": {"streamId": stream_id, "index": stored_through + 1_000_000},
        "unknown (as from before a database reset)": {"streamId": str(uuid.uuid4()), "index": 5},
        "malformed id": {"streamId": "not-a-stream", "index": 5},
        "another room's stream": {"streamId": foreign_stream, "index": 0},
    }
    for case, since in cases.items():
        reader.shown.clear()
        frames = await rejoin(reader, worker_b, room, since)
        kinds = [f["type"] for f in frames if f["type"] not in ("rooms", "stream.chunk")]
        assert kinds == ["error", "messages", "stream.resuming", "stream.replay_complete"], case
        error = frames[[f["type"] for f in frames].index("error")]
        assert error["code"] == "stale_cursor" and error["streamId"] == since["streamId"], case
        assert error["roomId"] == room and "ref" not in error, case
        resuming = next(f for f in frames if f["type"] == "stream.resuming")
        assert resuming["fromIndex"] == 0, case
        assert replayed_text(frames) == "".join(TOKENS), case
        assert sorted(reader.shown[stream_id]) == list(range(len(reader.shown[stream_id]))), case

    # An honest cursor continues where it was, without the error: its replay is exactly the stored
    # chunks after it, as the owner was shown them; one at the head replays nothing. The first cursor
    # is just before the answer's text (deltas that arrive together are sent as one chunk, so a stream
    # of 30 tokens may have only a few chunks): its replay holds all of the text, never nothing.
    first_text = min(i for i, chunk in owner.shown[stream_id].items() if chunk["type"] == "text-delta")
    assert 0 < first_text <= stored_through
    for since in ({"streamId": stream_id, "index": first_text - 1}, {"streamId": stream_id, "index": stored_through}):
        reader.shown.clear()
        frames = await rejoin(reader, worker_b, room, since)
        assert "error" not in [f["type"] for f in frames]
        assert next(f for f in frames if f["type"] == "stream.resuming")["fromIndex"] == since["index"] + 1
        after = range(since["index"] + 1, stored_through + 1)
        assert reader.shown.get(stream_id, {}) == {i: owner.shown[stream_id][i] for i in after}, since
        assert replayed_text(frames) == ("".join(TOKENS) if since["index"] < first_text else ""), since
        assert frames[-1]["lastIndex"] == (stored_through if after else -1), since

    # A cursor a little beyond the end is found out when the stream ends: stale_cursor, then stream.done.
    reader.shown.clear()
    await rejoin(reader, worker_b, room, {"streamId": stream_id, "index": stored_through + 50})
    await owner.send({"type": "chat.cancel", "requestId": "live"})
    frames = await reader.until("stream.done")
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["code"] for e in errors] == ["stale_cursor"] and errors[0]["streamId"] == stream_id
    assert frames.index(errors[0]) == len(frames) - 2
    text = await check_stream(stream_id, [owner], status="aborted")
    assert frames[-1]["message"]["content"] == text

    # With no live stream: an unknown cursor is told so; the stream that ended while away is not an error.
    for since, told in (({"streamId": str(uuid.uuid4()), "index": 3}, True), ({"streamId": stream_id, "index": 2}, False)):
        await reader.close()
        await reader.connect(worker_b)
        await reader.send({"type": "room.join", "roomId": room, "since": since})
        frames = await reader.until("messages")
        assert [f["code"] for f in frames if f["type"] == "error"] == (["stale_cursor"] if told else [])
        assert frames[-1]["messages"][-1]["content"] == text

    # A cleared room's old stream is no stream of the room any more.
    await owner.send({"type": "room.clear", "roomId": room})
    await owner.until("room.cleared")
    new_stream = await start_answer(cluster, owner, room, ScriptedReply(tokens=TOKENS, hold_open=True),
                                    request_id="after-clear", stored=True)  # a replay reads what is stored
    frames = await rejoin(reader, worker_b, room, {"streamId": stream_id, "index": 3})
    assert [f["code"] for f in frames if f["type"] == "error"] == ["stale_cursor"]
    assert replayed_text(frames) == "".join(TOKENS) and new_stream in reader.shown
    await owner.send({"type": "chat.cancel", "requestId": "after-clear"})
    await owner.until("stream.done", streamId=new_stream)
    await owner.close()
    await reader.close()
