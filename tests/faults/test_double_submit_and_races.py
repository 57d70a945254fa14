"""Fault 10: one requestId sent twice at once on two workers, and workers racing to finish one stale stream."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from channels.db import database_sync_to_async

from chatrooms.models import Message
from chatrooms.scripted_model_server import ScriptedReply
from streaming.models import Stream
from tests.servers import ROOT
from tests.servers import test_database_url as database_url

from .harness import Watcher, check_stream, room_watched_from, start_answer, wait_until_finished


@database_sync_to_async
def room_messages(room_id: str) -> list[tuple[str, str]]:
    return list(Message.objects.filter(room_id=room_id).order_by("pk").values_list("role", "status"))


async def read_until_done(watcher: Watcher, stream_id_holder: dict[str, str]) -> None:
    """Frames until this watcher's stream.done (the stream is whichever one started)."""
    while True:
        frame = await watcher.recv()
        if frame["type"] == "stream.start":
            stream_id_holder.setdefault("id", frame["streamId"])
        if frame["type"] == "stream.done":
            return


async def test_the_same_chat_send_twice_at_once_from_two_workers_makes_one_answer(cluster, sam):
    worker_a, worker_b = cluster.start_worker(), cluster.start_worker()
    on_a, on_b = await Watcher.log_in(worker_a, name="on A"), await Watcher.log_in(worker_b, name="on B")
    for attempt in range(5):
        room = await on_a.create_room(f"Twice {attempt}")
        await on_a.join(room)
        await on_b.join(room)
        requests_before = len(cluster.model_server.requests)
        cluster.model_server.enqueue(ScriptedReply(tokens=[f"once{i} " for i in range(30)], delay=0.01))
        frame = {"type": "chat.send", "roomId": room, "requestId": f"same-{attempt}", "text": "only once",
                 "ref": "send"}
        await asyncio.gather(on_a.send(frame), on_b.send(frame))

        started: dict[str, str] = {}
        await asyncio.gather(read_until_done(on_a, started), read_until_done(on_b, started))
        stream_id = started["id"]
        errors = [f for w in (on_a, on_b) for f in w.frames if f["type"] == "error" and f.get("ref") == "send"]
        assert [e["code"] for e in errors] == ["busy"], errors
        for watcher in (on_a, on_b):
            watcher.frames.clear()

        await check_stream(stream_id, [on_a, on_b], status="complete")
        assert len(cluster.model_server.requests) - requests_before == 1  # one generation
        # One user message (the loser's rolled back with its refusal), one answer.
        assert await room_messages(room) == [("user", "complete"), ("assistant", "complete")]
    for watcher in (on_a, on_b):
        await watcher.close()


async def test_a_killed_workers_stream_is_finished_once_while_everyone_races_for_it(cluster, sam):
    worker_a, worker_b, worker_c = cluster.start_worker(), cluster.start_worker(), cluster.start_worker()
    room, (on_a, on_b, on_c) = await room_watched_from([worker_a, worker_b, worker_c], "Raced")

    tokens = [f"r{i} " for i in range(60)]
    stream_id = await start_answer(cluster, on_a, room, ScriptedReply(tokens=tokens, hold_open=True),
                                   request_id="raced", seen_by=on_b, stored=True)
    worker_a.stop(signal.SIGKILL)

    # Everyone goes for it at the moment it turns stale: two recover_streams commands, a join from each
    # surviving worker, and both workers' sweeps (every STREAM_STALE_SECONDS / 2 on their own).
    stream = await database_sync_to_async(Stream.objects.get)(pk=stream_id)
    stale_at = stream.heartbeat_at.timestamp() + 5  # STREAM_STALE_SECONDS of the cluster's workers
    env = {name: value for name, value in os.environ.items() if name != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(cluster.env(), DATABASE_URL=database_url())
    # Staleness is a matter of the clock: there is no event to wait on. The commands start a little
    # early, as Django takes about a second to start; each retries until the stream is stale or gone.
    await asyncio.sleep(max(0.0, stale_at - time.time() - 1.0))
    script = ("import time, django; django.setup(); from django.core.management import call_command; "
              f"deadline = time.time() + 15\n"
              "from streaming.models import Stream\n"
              f"while Stream.objects.filter(pk={stream_id!r}, status='streaming').exists() and time.time() < deadline:\n"
              "    call_command('recover_streams')\n"
              "    time.sleep(0.05)\n")  # polling a clock-made state: no event
    commands = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT) for _ in range(2)]
    await asyncio.sleep(max(0.0, stale_at - time.time()))
    joiners = [await Watcher.log_in(worker, name=f"joiner {n}") for n, worker in enumerate((worker_b, worker_c))]
    await asyncio.gather(*(joiner.join(room) for joiner in joiners))
    outputs = [(await command.communicate())[0].decode() for command in commands]
    assert all(command.returncode == 0 for command in commands), outputs

    await wait_until_finished(stream_id)
    for watcher in (on_b, on_c):
        await watcher.until("stream.done", streamId=stream_id)
    text = await check_stream(stream_id, [on_a, on_b, on_c, *joiners], status="interrupted")
    assert text == "".join(tokens)
    finished_by_commands = sum(int(line.split()[0]) for out in outputs for line in out.splitlines()
                               if line.endswith("finished as interrupted"))
    assert finished_by_commands <= 1, outputs
    print(f"finished by the recover_streams commands: {finished_by_commands}")
    assert await room_messages(room) == [("user", "complete"), ("assistant", "interrupted")]

    # Nobody is told twice: a joiner either had the final message in `messages` or got one stream.done.
    for joiner in joiners:
        joined = next(f for f in joiner.frames if f["type"] == "messages")
        in_messages = joined["messages"][-1]["status"] == "interrupted"
        if not in_messages:
            await joiner.until("stream.done", streamId=stream_id)
        assert len(joiner.done.get(stream_id, [])) == (0 if in_messages else 1)
    # A little later still nothing more came: no second stream.done from a late finisher.
    await on_c.send({"type": "room.leave", "roomId": room, "ref": "leave"})
    frames = await on_c.until("ack", ref="leave")
    assert not [f for f in frames if f["type"] == "stream.done"]
    assert len(on_b.done[stream_id]) == 1 and len(on_c.done[stream_id]) == 1
    for watcher in (on_b, on_c, *joiners):
        await watcher.close()
