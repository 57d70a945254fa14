"""benchstream's measurements, each against one system: relay, fan-out, replay and idle memory."""
from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from .clients import Account, BenchError, ChatClient, StreamTally, close_all, connect_all, join_and_replay
from .model_server import bench_prompt, now_us
from .systems import System, cpu_seconds, rss_bytes

# A stream's end is waited for 120 s plus a second per 50 tokens of its run (all its streams
# together): a relay that slows to 50 tokens/s under overload is still measured, not failed.
STREAM_GRACE_SECONDS = 120
SLOWEST_TOKENS_PER_SECOND = 50


def latency_summary(latencies_us: list[int]) -> dict[str, float | None]:
    """p50/p95/p99/max in milliseconds (nearest rank)."""
    if not latencies_us:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(latencies_us)

    def rank(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))] / 1000

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": ordered[-1] / 1000}


def tally_summary(tallies: list[StreamTally], *, expected_per_tally: int, started_us: int) -> dict[str, Any]:
    """Tokens delivered over all tallies: how many, how fast, how late, and how many lost."""
    received = sum(len(tally.seqs) for tally in tallies)
    latencies = [latency for tally in tallies for latency in tally.latencies_us]
    finished = max((tally.last_at_us for tally in tallies if tally.last_at_us is not None), default=started_us)
    seconds = max(finished - started_us, 1) / 1e6
    return {
        "tokens": received,
        "tokensLost": expected_per_tally * len(tallies) - received,
        "duplicates": sum(tally.duplicates for tally in tallies),
        "frames": sum(tally.frames for tally in tallies),
        "seconds": round(seconds, 3),
        "tokensPerSecond": round(received / seconds, 1),
        "latencyMs": latency_summary(latencies),
    }


async def relay(system: System, *, streams: int, tokens: int, rate: float = 0, stagger: float = 0) -> dict[str, Any]:
    """`streams` clients, each in a room of its own, each asking for `tokens` tokens at `rate` per
    second (0: as fast as the model server can), their requests spread over `stagger` seconds."""
    clients = await connect_all(system.ws_url, system.accounts[:streams], origin=system.origin)
    try:
        rooms = await asyncio.gather(*(
            client.request({"type": "room.create", "name": f"bench {number}"}) for number, client in enumerate(clients)))
        # Counted from the first request to the last answer: the streams' statements, not the set-up's.
        await asyncio.to_thread(system.reset_statements)
        cpu_before = cpu_seconds(system.pid) if system.pid else None
        started = now_us()

        async def one(number: int, client: ChatClient, room_id: str) -> tuple[int, dict[str, Any] | str]:
            await asyncio.sleep(stagger * number / max(streams, 1))
            request_id = f"bench-{number}-{now_us()}"
            sent = now_us()
            await client.send({"type": "chat.send", "roomId": room_id, "requestId": request_id,
                               "text": bench_prompt(tokens, rate)})
            return sent, await until_done(client, request_id, STREAM_GRACE_SECONDS + streams * tokens / SLOWEST_TOKENS_PER_SECOND)

        outcomes = await asyncio.gather(*(
            one(number, client, room["room"]["id"]) for number, (client, room) in enumerate(zip(clients, rooms))))
        cpu_used = cpu_seconds(system.pid) - cpu_before if system.pid and cpu_before is not None else None
        statements = await asyncio.to_thread(system.statements)
    finally:
        await close_all(clients)
    tallies = [only_stream(client) for client in clients]
    summary = tally_summary(tallies, expected_per_tally=tokens, started_us=started)
    ttft = [tally.first_at_us - sent for (sent, _done), tally in zip(outcomes, tallies) if tally.first_at_us is not None]
    finished = [done for _sent, done in outcomes if isinstance(done, dict)]
    summary.update(
        streams=streams, tokensPerStream=tokens, rate=rate,
        chunks=sum(done["lastIndex"] + 1 for done in finished),
        statuses=dict(Counter([done["status"] for done in finished] + ["failed"] * (len(outcomes) - len(finished)))),
        failures=[done for _sent, done in outcomes if isinstance(done, str)][:3],
        timeToFirstTokenMs=latency_summary(ttft),
        serverCpuSeconds=None if cpu_used is None else round(cpu_used, 3),
        serverCpuUsPerToken=None if not cpu_used or not summary["tokens"] else round(cpu_used * 1e6 / summary["tokens"], 1),
        statements=statements,
    )
    return summary


async def until_done(client: ChatClient, request_id: str, timeout: float) -> dict[str, Any] | str:
    """The stream.done of this request, or why it never came (a dropped socket, a timeout): an
    overloaded server is measured, its failures counted, and the run goes on."""
    try:
        return await client.wait_for(
            lambda frame: frame["type"] == "stream.done" and frame.get("requestId") == request_id, timeout)
    except BenchError as why:
        return str(why)


def only_stream(client: ChatClient) -> StreamTally:
    """The tally of the one stream a measurement's client follows (empty if none of it came)."""
    return next(iter(client.streams.values()), StreamTally())


async def fanout(system: System, *, watchers: int, tokens: int) -> dict[str, Any]:
    """One stream of `tokens` tokens watched by `watchers` connections: the asker and members of its room."""
    accounts = system.accounts[:watchers]
    clients = await connect_all(system.ws_url, accounts, origin=system.origin)
    try:
        asker = clients[0]
        room_id = (await asker.request({"type": "room.create", "name": "bench fan-out"}))["room"]["id"]
        await _share(asker, room_id, accounts)
        await asyncio.gather(*(client.request({"type": "room.join", "roomId": room_id}) for client in clients))
        request_id = f"fanout-{now_us()}"
        started = now_us()
        await asker.send({"type": "chat.send", "roomId": room_id, "requestId": request_id,
                          "text": bench_prompt(tokens)})
        outcomes = await asyncio.gather(*(
            until_done(client, request_id, STREAM_GRACE_SECONDS + tokens / SLOWEST_TOKENS_PER_SECOND)
            for client in clients))
    finally:
        await close_all(clients)
    finished = [done for done in outcomes if isinstance(done, dict)]
    summary = tally_summary([only_stream(client) for client in clients], expected_per_tally=tokens, started_us=started)
    summary.update(watchers=watchers, tokensPerStream=tokens,
                   failures=[done for done in outcomes if isinstance(done, str)][:3],
                   watchersFailed=len(outcomes) - len(finished),
                   lastDoneMs=round((max(done["_receivedUs"] for done in finished) - started) / 1000, 1)
                   if finished else None)
    return summary


async def _share(asker: ChatClient, room_id: str, accounts: list[Account]) -> None:
    """Make every other account a member of the room, so that it may watch (one account: nothing to do)."""
    owner = accounts[0].username
    for username in sorted({account.username for account in accounts[1:]} - {owner}):
        await asker.request({"type": "room.share", "roomId": room_id, "username": username})


async def replay(system: System, *, chunks: int, repeats: int) -> dict[str, Any]:
    """Join a room whose live stream has `chunks` chunks stored: the time from room.join to
    stream.replay_complete, on a fresh connection each time."""
    account = system.accounts[0]
    runs: list[float] = []
    for _repeat in range(repeats):
        room_id, handle = await system.seed_replay(account, chunks)
        try:
            elapsed_ms, count, complete = await join_and_replay(system.ws_url, account, origin=system.origin,
                                                                room_id=room_id)
        finally:
            await system.finish_replay(handle)
        runs.append(elapsed_ms)
        if count != chunks or complete["lastIndex"] != chunks - 1:
            raise BenchError(f"the replay sent {count} chunks (last index {complete['lastIndex']}), not {chunks}")
    return {"chunks": chunks, "repeats": repeats, "runsMs": [round(run, 1) for run in runs],
            "medianMs": round(sorted(runs)[len(runs) // 2], 1)}


async def idle(system: System, *, connections: int, settle_seconds: float = 2) -> dict[str, Any]:
    """Server memory per idle, logged-in connection: its RSS with `connections` sockets open, less its
    RSS before, divided by their number."""
    if system.pid is None:
        return {"connections": connections, "skipped": "the server's process id is unknown (give --server-pid)"}
    accounts = [system.accounts[number % len(system.accounts)] for number in range(connections)]
    await asyncio.sleep(settle_seconds)
    before = rss_bytes(system.pid)
    clients = await connect_all(system.ws_url, accounts, origin=system.origin)
    try:
        await asyncio.sleep(settle_seconds)  # the room lists that follow hello, and the allocator, settle
        after = rss_bytes(system.pid)
    finally:
        await close_all(clients)
    return {"connections": connections, "rssBeforeBytes": before, "rssAfterBytes": after,
            "bytesPerConnection": round((after - before) / connections)}
