"""One benchstream run: the model server and the systems started, every measurement taken of each, and the comparison."""
from __future__ import annotations

import asyncio
import os
import platform
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from . import phases
from .profile import summarise_folded_stacks
from .config import BenchConfig
from .report import compare
from .systems import AppSystem, BaselineSystem, ExternalApp, ModelServer, System, Unsupported

# Seconds each run of the recorder's cost lasts (its tokens are its rate times this).
COST_RUN_SECONDS = 10


def run_benchmark(config: BenchConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every system and compare them; every process started is stopped again, whatever happens."""
    config.out_dir.mkdir(parents=True, exist_ok=True)
    database_url = config.database_url or f"sqlite:///{config.out_dir.resolve() / 'bench.sqlite3'}"
    results: dict[str, Any] = {"meta": describe_run(config, database_url), "processes": {}, "systems": {}}
    model_server = ModelServer(config.out_dir, config.model_port)
    systems: list[System] = []
    try:
        model_server.start()
        results["processes"]["modelServer"] = model_server.process.pid
        say(f"model server on {model_server.base_url}")
        systems = [
            BaselineSystem(source="sse", model_url=model_server.base_url, out_dir=config.out_dir),
            BaselineSystem(source="litellm", model_url=model_server.base_url, out_dir=config.out_dir),
            BaselineSystem(source="litellm-provider", model_url=model_server.base_url, out_dir=config.out_dir),
            ExternalApp(url=config.url, username=config.username, password=config.password, pid=config.server_pid)
            if config.url else
            AppSystem(model_url=model_server.base_url, database_url=database_url, redis_url=config.redis_url,
                      out_dir=config.out_dir, run_id=config.run_id),
        ]
        say("starting " + ", ".join(system.label for system in systems))
        start_all(systems, config.account_count)
        results["processes"].update({system.name: system.pid for system in systems if system.pid})
        results["systems"] = asyncio.run(measure(systems, config, say))
        if isinstance(systems[-1], AppSystem) and config.database_url:
            systems[-1].remove_accounts()  # a database of the operator's own: leave it as it was
    finally:
        for system in systems:
            system.stop()
        model_server.stop()
        if not config.database_url:
            for suffix in ("", "-wal", "-shm"):
                (config.out_dir / f"bench.sqlite3{suffix}").unlink(missing_ok=True)
    results.update(compare(results["systems"], config))
    results["meta"]["finishedAt"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["meta"]["machine"]["loadAverageAtEnd"] = list(os.getloadavg())
    return results


def start_all(systems: list[System], account_count: int) -> None:
    """Start the systems side by side (each imports for seconds); none is measured before all are up,
    so that no start-up competes with a measurement for the CPU."""
    with ThreadPoolExecutor(len(systems)) as pool:
        started = [pool.submit(system.start, account_count) for system in systems]
    for future in started:
        future.result()  # the first failure raises; run_benchmark stops them all


async def measure(systems: list[System], config: BenchConfig, say: Callable[[str], None]) -> dict[str, Any]:
    """Every measurement, each taken of all the systems in turn before the next, and the full-speed
    runs interleaved: a change in the machine's load (it may be shared) then weighs on all of them alike."""
    measured: dict[str, dict[str, Any]] = {system.name: {"label": system.label} for system in systems}
    for system in systems:
        await phases.relay(system, streams=1, tokens=config.warm_up_tokens)  # imports, connections, caches
    # Idle memory first: later measurements leave freed memory in a process, which new sockets would reuse.
    for system in systems:
        measured[system.name]["idle"] = idle = await phases.idle(system, connections=config.idle_connections,
                                                                 settle_seconds=0.5 if config.quick else 2)
        if "bytesPerConnection" in idle:
            say(f"{system.name}: idle, {idle['bytesPerConnection'] / 1024:,.1f} KiB per connection")
    runs: dict[str, list[dict[str, Any]]] = {system.name: [] for system in systems}
    for repeat in range(config.repeats):
        for system in systems[repeat % len(systems):] + systems[:repeat % len(systems)]:
            run = await phases.relay(system, streams=config.streams, tokens=config.tokens)
            runs[system.name].append(run)
            say(f"{system.name}: relay {config.streams}x{config.tokens}, {run['tokensPerSecond']:,.0f} tokens/s"
                + (f", {run['tokensLost']:,} tokens lost" if run["tokensLost"] else ""))
    for system in systems:
        measured[system.name]["relay"] = median_run(runs[system.name])
        if system.can_switch_recorder:
            measured[system.name].update(await recorder_runs(
                system, config, measured[system.name]["relay"]["tokensPerSecond"], say))
        if config.profile and (isinstance(system, AppSystem) or system.name == "C"):  # the app, and its floor
            measured[system.name]["profile"] = await profile_run(
                system, config, say, "relay", streams=config.streams, tokens=config.tokens)
            measured[system.name]["profileLoad"] = await profile_run(
                system, config, say, "load", streams=config.load_streams, tokens=config.load_tokens,
                rate=config.load_rate, stagger=config.load_stagger)
    for system in systems:
        measured[system.name]["fanout"] = fanout = await phases.fanout(system, watchers=config.watchers,
                                                                       tokens=config.tokens)
        say(f"{system.name}: fan-out to {config.watchers}, {fanout['tokensPerSecond']:,.0f} tokens/s delivered")
    for system in systems:
        measured[system.name]["load"] = load = await phases.relay(
            system, streams=config.load_streams, tokens=config.load_tokens, rate=config.load_rate,
            stagger=config.load_stagger)
        say(f"{system.name}: load of {config.load_streams} streams at {config.load_rate:g}/s, "
            f"p99 {load['latencyMs']['p99']} ms, {load['tokensLost']} tokens lost")
    for system in systems:
        try:
            measured[system.name]["replay"] = replay = await phases.replay(
                system, chunks=config.replay_chunks, repeats=config.replay_repeats)
            say(f"{system.name}: replay of {config.replay_chunks:,} chunks, {replay['medianMs']} ms")
        except Unsupported as why:
            measured[system.name]["replay"] = {"chunks": config.replay_chunks, "skipped": str(why)}
    return measured


async def recorder_runs(system: System, config: BenchConfig, saturation: float,
                        say: Callable[[str], None]) -> dict[str, Any]:
    """The app without its recorder: one full-speed run (what gets lost), and what the recorder costs."""
    try:
        await asyncio.to_thread(system.set_recorder, False)
        off = await phases.relay(system, streams=config.streams, tokens=config.tokens)
    finally:
        await asyncio.to_thread(system.set_recorder, True)
    say(f"{system.name}: relay {config.streams}x{config.tokens} without the recorder, "
        f"{off['tokensPerSecond']:,.0f} tokens/s, {off['tokensLost']:,} tokens lost")
    return {"relayRecorderOff": off, "recorderCost": await recorder_cost(system, config, saturation, say)}


async def recorder_cost(system: System, config: BenchConfig, saturation: float,
                        say: Callable[[str], None]) -> dict[str, Any]:
    """The server's CPU time per token with the recorder on and off, in turn, at half the app's
    full-speed throughput: a load it keeps up with, so that both ways deliver every token. (At full
    speed a connection that falls 2 s behind catches up from the database, which without the recorder
    holds nothing: tokens are lost, and a throughput without the recorder means little.) Where CPU is
    what limits throughput, CPU per token is its inverse. `saturation`: the full-speed tokens/s."""
    rate = max(1.0, round(saturation / 2 / config.streams, 1))
    tokens = max(config.warm_up_tokens, round(rate * (2 if config.quick else COST_RUN_SECONDS)))
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    try:
        for _repeat in range(config.repeats):
            for store in (True, False):
                await asyncio.to_thread(system.set_recorder, store)
                runs[store].append(await phases.relay(system, streams=config.streams, tokens=tokens, rate=rate,
                                                      stagger=1 / rate))
    finally:
        await asyncio.to_thread(system.set_recorder, True)

    def cpu_per_token(store: bool) -> float | None:
        values = sorted(run["serverCpuUsPerToken"] for run in runs[store] if run["serverCpuUsPerToken"])
        return values[len(values) // 2] if values else None

    on, off = cpu_per_token(True), cpu_per_token(False)
    cost = round(1 - off / on, 3) if on and off else None
    # The statements of a load the app keeps up with, where flushes go by time, not by count.
    statements: Counter[str] = Counter()
    for run in runs[True]:
        statements.update((run["statements"] or {}).get("byStatement", {}))
    # What starting and finishing an answer costs whatever its length: the same streams, two tokens each.
    short = await phases.relay(system, streams=config.streams, tokens=2, rate=rate, stagger=1 / rate)
    fixed_per_answer = (short["statements"] or {}).get("total")
    say(f"{system.name}: recorder at {config.streams} streams x {rate:g} tokens/s, CPU {on} us/token on, "
        f"{off} us/token off" + (f": it costs {cost:.0%}" if cost is not None else ""))
    return {"streams": config.streams, "rate": rate, "tokensPerStream": tokens,
            "cpuUsPerTokenOn": on, "cpuUsPerTokenOff": off, "cost": cost,
            "runsCpuUsPerTokenOn": [run["serverCpuUsPerToken"] for run in runs[True]],
            "runsCpuUsPerTokenOff": [run["serverCpuUsPerToken"] for run in runs[False]],
            "tokensLost": sum(run["tokensLost"] for store in runs for run in runs[store]),
            "statements": {"total": sum(statements.values()), "byStatement": dict(statements.most_common())},
            "chunks": sum(run["chunks"] for run in runs[True]),
            "tokens": sum(run["tokens"] for run in runs[True]),
            "answers": config.streams * len(runs[True]),
            "statementsPerShortAnswer": round(fixed_per_answer / config.streams, 1) if fixed_per_answer else None,
            "latencyP99MsOn": [run["latencyMs"]["p99"] for run in runs[True]],
            "latencyP99MsOff": [run["latencyMs"]["p99"] for run in runs[False]]}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median throughput, with every run's throughput beside it."""
    median = sorted(runs, key=lambda run: run["tokensPerSecond"])[len(runs) // 2]
    return {**median, "runsTokensPerSecond": [run["tokensPerSecond"] for run in runs]}


async def profile_run(system: System, config: BenchConfig, say: Callable[[str], None], name: str,
                      **relay: Any) -> dict[str, Any]:
    """One more relay run (`relay`: phases.relay's sizes) with py-spy sampling the server: where its CPU time goes."""
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None or system.pid is None:
        return {"skipped": "py-spy is not installed (pip install -e '.[bench]')"}
    folded = config.out_dir / f"profile-{system.name}-{name}.folded"
    sampler = subprocess.Popen(
        [py_spy, "record", "--pid", str(system.pid), "--rate", "200", "--format", "raw", "--output", str(folded),
         "--full-filenames", "--nonblocking", "--gil"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await asyncio.sleep(1)  # py-spy attaches
        run = await phases.relay(system, **relay)
    finally:
        sampler.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
        _out, errors = await asyncio.to_thread(sampler.communicate, timeout=60)
    if not folded.exists():
        return {"skipped": f"py-spy wrote nothing: {errors.decode(errors='replace')[-500:]}"}
    say(f"{system.name}: profiled {name} run, {run['tokensPerSecond']:,.0f} tokens/s and latency p99 "
        f"{run['latencyMs']['p99']} ms under py-spy; stacks in {folded}")
    return {"file": folded.name, "tokensPerSecondWhileSampled": run["tokensPerSecond"],
            "latencyP99MsWhileSampled": run["latencyMs"]["p99"],
            **summarise_folded_stacks(folded.read_text())}


def describe_run(config: BenchConfig, database_url: str) -> dict[str, Any]:
    """The command, the machine and the software a run measured, so that its figures can be compared."""
    def package(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu_model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                      if line.startswith("model name")), platform.processor() or None)
    mem_total = next((int(line.split()[1]) * 1024 for line in _read("/proc/meminfo").splitlines()
                      if line.startswith("MemTotal:")), None)
    sizes = {key: value for key, value in asdict(config).items()
             if key in {"streams", "tokens", "watchers", "replay_chunks", "idle_connections", "load_streams",
                        "load_rate", "load_tokens", "load_stagger", "repeats", "replay_repeats", "quick"}}
    return {
        "command": config.command,
        "startedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpuModel": cpu_model, "memoryBytes": mem_total,
                    "loadAverageAtStart": list(os.getloadavg()), "platform": platform.platform(),
                    "python": platform.python_version()},
        "software": {name: package(name) for name in ("Django", "channels", "daphne", "channels-redis", "litellm",
                                                      "websockets", "aiohttp", "Twisted")},
        "database": "sqlite (fresh file)" if not config.database_url else database_url.split(":", 1)[0],
        "channelLayer": "redis (pub/sub)" if config.redis_url else "in-memory",
        "target": config.url or "daphne started by benchstream",
        "sizes": sizes,
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""

