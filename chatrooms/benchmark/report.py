"""benchstream's results: ratios to the baselines, the issue's targets, and the table, JSON and chart they are shown in."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import BenchConfig

BASELINES = ("A", "B", "C")
# Figures compared with the baselines, by section; a ratio is always the app's figure divided by the
# baseline's (above 1: more tokens per second, or more milliseconds, or more bytes than the baseline).
RATIO_FIGURES = {
    "relay": ["tokensPerSecond", "latencyMs.p50", "latencyMs.p95", "latencyMs.p99", "timeToFirstTokenMs.p50",
              "serverCpuUsPerToken"],
    "fanout": ["tokensPerSecond", "latencyMs.p50", "latencyMs.p95", "latencyMs.p99", "lastDoneMs"],
    "load": ["latencyMs.p50", "latencyMs.p95", "latencyMs.p99", "timeToFirstTokenMs.p50", "serverCpuUsPerToken"],
    "replay": ["medianMs"],
    "idle": ["bytesPerConnection"],
}
TRANSACTION_CONTROL = {"BEGIN", "SAVEPOINT", "RELEASE", "ROLLBACK", "COMMIT"}
KIB = 1024


def figure(section: dict[str, Any] | None, path: str) -> Any:
    value: Any = section
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def ratio(numerator: Any, denominator: Any) -> float | None:
    if not isinstance(numerator, (int, float)) or not isinstance(denominator, (int, float)) or not denominator:
        return None
    return round(numerator / denominator, 3)


def compare(systems: dict[str, dict[str, Any]], config: BenchConfig) -> dict[str, Any]:
    """Each section with the app's and the baselines' figures side by side, the ratios, the cost of
    storage, and the targets of the issue met or not."""
    compared: dict[str, Any] = {}
    for section, paths in RATIO_FIGURES.items():
        entry: dict[str, Any] = {name: systems.get(name, {}).get(section) for name in ("app", *BASELINES)}
        entry["ratios"] = {
            f"app/{baseline}": {path: ratio(figure(entry["app"], path), figure(entry[baseline], path)) for path in paths}
            for baseline in BASELINES
        }
        compared[section] = entry
    compared["cost"] = storage_cost(systems)
    compared["targets"] = targets(compared, config)
    return compared


def storage_cost(systems: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """SQL statements per chunk; what the recorder costs (server CPU per token with and without it, at
    a load the server keeps up with) and what it buys (tokens lost without it at full speed)."""
    app = systems.get("app", {})
    if "recorderCost" not in app or figure(app, "relay.statements") is None:
        return {"skipped": "needs the app started by benchstream (not --url)"}
    cost: dict[str, Any] = {"statementsPerChunk": {}, "statementsPerToken": {}, "dataStatementsPerChunk": {},
                            "statementsByKind": {}}
    phases = {"relay": app["relay"], "load": app["load"], "halfSpeed": app["recorderCost"]}
    for phase, measured in phases.items():
        counted, chunks = measured["statements"], measured["chunks"]
        data = sum(count for label, count in counted["byStatement"].items() if label not in TRANSACTION_CONTROL)
        cost["statementsPerChunk"][phase] = ratio(counted["total"], chunks)
        cost["statementsPerToken"][phase] = ratio(counted["total"], measured.get("tokens"))
        cost["dataStatementsPerChunk"][phase] = ratio(data, chunks)
        cost["statementsByKind"][phase] = {label: ratio(count, chunks) for label, count in counted["byStatement"].items()}
    # Per chunk beyond what each answer costs to start and finish whatever its length (measured on
    # answers of two tokens): what grows with the chunks, the recorder's writes above all.
    half = app["recorderCost"]
    per_answer = half.get("statementsPerShortAnswer")
    cost["statementsPerAnswer"] = per_answer
    cost["statementsPerChunkBeyondAnswers"] = (
        ratio(max(half["statements"]["total"] - per_answer * half["answers"], 0), half["chunks"])
        if per_answer is not None and "answers" in half else None)
    off = app["relayRecorderOff"]
    on_speed, off_speed = app["relay"]["tokensPerSecond"], off["tokensPerSecond"]
    cost.update(
        recorder=app["recorderCost"],
        recorderCost=app["recorderCost"]["cost"],
        # Chunks that connections read back from the database in the full-speed runs: the catch-ups of
        # connections that fell behind (or missed what the layer dropped), made good from the recorder's copy.
        chunkReadsAtFullSpeed=app["relay"]["statements"]["byStatement"].get("SELECT streaming_streamchunk", 0),
        recorderOnTokensPerSecond=on_speed,
        recorderOffTokensPerSecond=off_speed,
        recorderOffTokensLost=off["tokensLost"],
        recorderOffTokens=off["tokens"] + off["tokensLost"],
        ratios={f"app/{baseline}": {
            "recorderOnTokensPerSecond": ratio(on_speed, figure(systems.get(baseline), "relay.tokensPerSecond")),
            "recorderOffTokensPerSecond": ratio(off_speed, figure(systems.get(baseline), "relay.tokensPerSecond")),
        } for baseline in BASELINES},
    )
    return cost


def targets(compared: dict[str, Any], config: BenchConfig) -> list[dict[str, Any]]:
    """The issue's targets for the default configuration, each with the figure that decides it."""
    def check(name: str, goal: str, value: Any, met: bool | None) -> dict[str, Any]:
        return {"target": name, "goal": goal, "value": value, "met": met if value is not None else None}

    relay_b = compared["relay"]["ratios"]["app/B"]["tokensPerSecond"]
    relay_a = compared["relay"]["ratios"]["app/A"]["tokensPerSecond"]
    p99 = figure(compared["load"]["app"], "latencyMs.p99")
    lost = sum(figure(compared[section]["app"], "tokensLost") or 0 for section in ("relay", "fanout", "load"))
    replay_ms = figure(compared["replay"]["app"], "medianMs")
    cost = compared["cost"]
    recorder = cost.get("recorderCost")
    # Judged where the server keeps up, so that a chunk is a token, and on what grows with the chunks:
    # the statements that start and finish each answer (about 30, shown apart) are not per chunk. At
    # full speed and under overload deltas that arrive together are one chunk, and those fixed
    # statements weigh on a few dozen chunks; the table shows all phases per chunk and per token.
    per_chunk = cost.get("statementsPerChunkBeyondAnswers")
    idle = figure(compared["idle"]["app"], "bytesPerConnection")
    return [
        check("saturation throughput vs B", ">= 1.0x B", relay_b, relay_b is not None and relay_b >= 1.0),
        check("saturation throughput vs A", "on the way to 0.3x A", relay_a, relay_a is not None and relay_a >= 0.3),
        check(f"added latency p99 at {config.load_streams} streams x {config.load_rate:g} tokens/s", "< 25 ms", p99,
              p99 is not None and p99 < 25),
        check("tokens lost (relay, fan-out, load)", "0", lost, lost == 0),
        check(f"replay of {config.replay_chunks:,} chunks", "< 500 ms", replay_ms,
              replay_ms is not None and replay_ms < 500),
        check("recorder cost (server CPU per token, at half the full-speed throughput)", "<= 10%", recorder,
              recorder is not None and recorder <= 0.10),
        check("database statements per chunk (at half speed, beyond each answer's start and finish)", "<= 0.2",
              per_chunk,
              per_chunk is not None and per_chunk <= 0.2),
        check("memory per idle connection", "< 64 KiB", idle, idle is not None and idle < 64 * KIB),
    ]


# -- showing them ------------------------------------------------------------------------------


def _number(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) < 10 and digits:
        return f"{value:.{max(digits, 2)}f}".rstrip("0").rstrip(".") if value else "0"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.{digits}f}"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """Metric, app, each baseline, app/each baseline: one row per figure."""
    meta = results["meta"]["sizes"]
    rows: list[list[str]] = []
    zeros, dashes = ["0"] * len(BASELINES), ["-"] * len(BASELINES)

    def add(section: str, label: str, path: str, scale: float = 1, with_ratio: bool = True) -> None:
        entry = results[section]
        values = [figure(entry.get(name), path) for name in ("app", *BASELINES)]
        shown = [_number(value / scale if isinstance(value, (int, float)) else value) for value in values]
        ratios = [_number(entry["ratios"][f"app/{b}"].get(path), 2) if with_ratio else "-" for b in BASELINES]
        rows.append([label, *shown, *ratios])

    s, t = meta["streams"], meta["tokens"]
    add("relay", f"relay {s}x{t}: tokens/s", "tokensPerSecond")
    add("relay", "relay: latency p50 ms", "latencyMs.p50")
    add("relay", "relay: latency p99 ms", "latencyMs.p99")
    add("relay", "relay: time to first token p50 ms", "timeToFirstTokenMs.p50")
    add("relay", "relay: server CPU us/token", "serverCpuUsPerToken")
    add("fanout", f"fan-out 1->{meta['watchers']}: tokens/s delivered", "tokensPerSecond")
    add("fanout", "fan-out: latency p99 ms", "latencyMs.p99")
    add("load", f"load {meta['load_streams']}x{meta['load_rate']:g}/s: latency p50 ms", "latencyMs.p50")
    add("load", "load: latency p95 ms", "latencyMs.p95")
    add("load", "load: latency p99 ms", "latencyMs.p99")
    add("load", "load: tokens lost", "tokensLost", with_ratio=False)
    add("replay", f"replay {meta['replay_chunks']:,} chunks: ms", "medianMs")
    add("idle", f"idle x{meta['idle_connections']}: KiB/connection", "bytesPerConnection", scale=KIB)
    cost = results["cost"]
    if "skipped" not in cost:
        recorder = cost["recorder"]
        for phase, label in (("relay", "relay"), ("load", "load"),
                             ("halfSpeed", f"{recorder['streams']}x{recorder['rate']:g}/s (half speed)")):
            rows.append([f"{label}: SQL statements per chunk / per token", f"{_number(cost['statementsPerChunk'][phase], 3)}"
                         f" / {_number(cost['statementsPerToken'].get(phase), 3)}", *zeros, *dashes])
        rows.append(["SQL statements per answer (start and finish) / per chunk beyond them",
                     f"{_number(cost.get('statementsPerAnswer'))} / {_number(cost.get('statementsPerChunkBeyondAnswers'), 3)}",
                     *zeros, *dashes])
        rows.append([f"recorder at {recorder['streams']}x{recorder['rate']:g}/s: CPU us/token on / off",
                     f"{_number(recorder['cpuUsPerTokenOn'])} / {_number(recorder['cpuUsPerTokenOff'])}",
                     *dashes, *dashes])
        rows.append(["recorder cost (CPU per token)", f"{cost['recorderCost']:.0%}" if cost["recorderCost"] is not None
                     else "-", *dashes, *dashes])
        rows.append(["relay without recorder: tokens/s", _number(cost["recorderOffTokensPerSecond"]),
                     *[_number(figure(results["relay"][b], "tokensPerSecond")) for b in BASELINES],
                     *[_number(cost["ratios"][f"app/{b}"]["recorderOffTokensPerSecond"], 2) for b in BASELINES]])
        rows.append(["relay without recorder: tokens lost",
                     f"{cost['recorderOffTokensLost']:,} of {cost['recorderOffTokens']:,}", *dashes, *dashes])
    return rows


def table_header() -> list[str]:
    return ["", "app", *BASELINES, *[f"app/{baseline}" for baseline in BASELINES]]


def format_table(results: dict[str, Any]) -> str:
    header = table_header()
    rows = [header, *table_rows(results)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[0]) if column == 0 else cell.rjust(widths[column])
                       for column, cell in enumerate(row)) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    for target in results["targets"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[target["met"]]
        lines.append(f"{verdict:>6}  {target['target']}: {target['goal']} (measured: {_target_value(target)})")
    return "\n".join(lines)


def format_markdown_table(results: dict[str, Any]) -> str:
    """The same table in Markdown, for docs/benchmarks.md."""
    header = table_header()
    rows = [header, ["---", *["---:"] * (len(header) - 1)], *table_rows(results)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _target_value(target: dict[str, Any]) -> str:
    value = target["value"]
    if value is None:
        return "-"
    if "KiB" in target["goal"]:
        return f"{value / KIB:.1f} KiB"
    if "%" in target["goal"]:
        return f"{value:.1%}"
    if "x" in target["goal"] and isinstance(value, float):
        return f"{value:.2f}x"
    if "ms" in target["goal"]:
        return f"{value:.1f} ms"
    return str(value)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


def write_chart(results: dict[str, Any], path: Path) -> bool:
    """A PNG of the main figures against the targets; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [*BASELINES, "app"]
    colours = {"A": "#8c8c8c", "B": "#5b8fd6", "C": "#7fb3a3", "app": "#e07b39"}
    figure_, axes = plt.subplots(2, 3, figsize=(11, 6), dpi=72)
    meta = results["meta"]["sizes"]

    def bars(axis: Any, title: str, labels: list[str], values: list[Any], target: float | None = None,
             target_label: str = "", log: bool = False) -> None:
        shown = [value if isinstance(value, (int, float)) else 0 for value in values]
        axis.bar(labels, shown, color=[colours.get(label, "#999999") for label in labels])
        if log:  # the baselines and the app can be orders of magnitude apart
            axis.set_yscale("log")
        for position, value in enumerate(values):
            axis.annotate(_number(value), (position, shown[position]), ha="center", va="bottom", fontsize=8)
        if target is not None:  # a dashed line, named in the title
            axis.axhline(target, color="#c0392b", linestyle="--", linewidth=1)
            title += f" [-- {target_label}]"
        axis.set_title(title, fontsize=10)
        axis.tick_params(labelsize=8)
        axis.margins(y=0.15)

    relay = [figure(results["relay"][name], "tokensPerSecond") for name in names]
    cost = results["cost"]
    b = figure(results["relay"]["B"], "tokensPerSecond")
    bars(axes[0][0], f"relay {meta['streams']}x{meta['tokens']}: tokens/s (log)", names, relay, b, "B", log=True)
    bars(axes[0][1], f"fan-out 1->{meta['watchers']}: tokens/s delivered (log)", names,
         [figure(results["fanout"][name], "tokensPerSecond") for name in names], log=True)
    axis = axes[0][2]
    for offset, percentile in ((-0.2, "p50"), (0.2, "p99")):
        values = [figure(results["load"][name], f"latencyMs.{percentile}") or 0 for name in names]
        axis.bar([position + offset for position in range(len(names))], values, width=0.4, label=percentile,
                 color=[colours[name] for name in names], alpha=0.55 if percentile == "p50" else 1)
        for position, value in enumerate(values):
            axis.annotate(_number(value), (position + offset, value), ha="center", va="bottom", fontsize=7)
    axis.set_xticks(range(len(names)), names)
    axis.set_yscale("log")
    axis.axhline(25, color="#c0392b", linestyle="--", linewidth=1)
    axis.set_title(f"load {meta['load_streams']}x{meta['load_rate']:g}/s: p50 | p99 ms (log) [-- 25 ms]", fontsize=10)
    axis.tick_params(labelsize=8)
    axis.margins(y=0.15)
    bars(axes[1][0], f"replay {meta['replay_chunks']:,} chunks: ms", names,
         [figure(results["replay"][name], "medianMs") for name in names], 500, "500 ms")
    bars(axes[1][1], "idle: KiB/connection", names,
         [(figure(results["idle"][name], "bytesPerConnection") or 0) / KIB for name in names], 64, "64 KiB")
    if "skipped" not in cost:
        bars(axes[1][2], "app: SQL statements", ["full speed\nper token", "load\nper token",
                                                 "half speed\nper chunk", "beyond\nanswers"],
             [cost["statementsPerToken"].get("relay"), cost["statementsPerToken"].get("load"),
              cost["statementsPerChunk"].get("halfSpeed"), cost.get("statementsPerChunkBeyondAnswers")], 0.2, "0.2")
    else:
        axes[1][2].axis("off")
    figure_.suptitle(f"benchstream: {results['meta']['database']}, {results['meta']['channelLayer']} layer, "
                     f"{results['meta']['machine']['cpus']} CPUs", fontsize=11)
    figure_.tight_layout()
    figure_.savefig(path)
    plt.close(figure_)
    return True
