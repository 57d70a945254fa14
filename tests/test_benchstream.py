"""manage.py benchstream at a tiny size (--quick): every section has figures and ratios, no token is lost, no process is left."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatrooms.server_processes import ROOT

pytestmark = pytest.mark.e2e

COMPARED = {  # section: figures that the app, A and B each have, and that are compared as ratios
    "relay": ["tokensPerSecond", "latencyMs.p50", "latencyMs.p99", "timeToFirstTokenMs.p50"],
    "fanout": ["tokensPerSecond", "latencyMs.p99"],
    "load": ["latencyMs.p50", "latencyMs.p99"],
    "replay": ["medianMs"],
    "idle": ["bytesPerConnection"],
}


def figure(section: dict, path: str):
    for key in path.split("."):
        section = section[key]
    return section


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited, and only waiting for init to reap it


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_quick_run_measures_every_section_against_both_baselines_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    # The run makes its own SQLite database and in-memory layer, whatever the suite runs on.
    env = {name: value for name, value in os.environ.items()
           if name not in {"DATABASE_URL", "REDIS_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"}}
    completed = subprocess.run(
        [sys.executable, "manage.py", "benchstream", "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())

    for section, paths in COMPARED.items():
        for path in paths:
            for system in ("app", "A", "B", "C"):
                assert is_number(figure(results[section][system], path)), (section, system, path)
            for baseline in ("app/A", "app/B", "app/C"):
                assert is_number(results[section]["ratios"][baseline][path]), (section, baseline, path)
    cost = results["cost"]
    for phase in ("relay", "load", "halfSpeed"):
        assert cost["statementsPerChunk"][phase] > 0
    assert cost["recorderOnTokensPerSecond"] > 0 and cost["recorderOffTokensPerSecond"] > 0
    assert is_number(cost["recorderCost"])
    assert cost["recorder"]["cpuUsPerTokenOn"] > 0 and cost["recorder"]["cpuUsPerTokenOff"] > 0
    assert cost["recorder"]["tokensLost"] == 0  # at half speed, with the recorder and without
    assert all(is_number(value) for ratios in cost["ratios"].values() for value in ratios.values())

    for section in ("relay", "fanout", "load"):
        for system in ("app", "A", "B", "C"):
            measured = results[section][system]
            assert measured["tokensLost"] == 0 and measured["duplicates"] == 0, (section, system)
    assert results["relay"]["app"]["statuses"] == {"complete": results["relay"]["app"]["streams"]}
    assert {target["met"] for target in results["targets"]} <= {True, False}

    assert "tokens/s" in completed.stdout  # the table
    assert set(results["processes"]) == {"modelServer", "A", "B", "C", "app"}
    assert all(process_gone(pid) for pid in results["processes"].values()), results["processes"]
    assert not (out / "bench.sqlite3").exists()


def test_a_profile_is_summed_by_the_apps_own_function_nearest_each_sample():
    from chatrooms.benchmark.profile import summarise_folded_stacks

    site = "/venv/lib/python3.11/site-packages"
    run = "Handle._run (/usr/lib/python3.11/asyncio/events.py:80)"
    step = f"ReplyRun._model_step ({ROOT}/chatrooms/assistant.py:540)"
    listing = f"room_list_for_user ({ROOT}/chatrooms/selectors.py:80)"
    counter = f"StatementCounter.__call__ ({ROOT}/chatrooms/benchmark/server_app.py:40)"
    folded = "\n".join([
        f"{run};{step};AsyncStream.__stream__ ({site}/openai/_streaming.py:150) 6",
        f"{run};{listing};QuerySet._fetch_all ({site}/django/db/models/query.py:1952);{counter};"
        f"execute ({site}/django/db/backends/sqlite3/base.py:350) 3",
        f"{run};select ({site}/twisted/internet/epollreactor.py:10) 1",
    ])
    summary = summarise_folded_stacks(folded)
    assert summary["samples"] == 10
    assert summary["byInnermostProjectFunction"] == [
        {"name": "ReplyRun._model_step (chatrooms/assistant.py)", "share": 0.6},
        {"name": "room_list_for_user (chatrooms/selectors.py)", "share": 0.3},  # not benchstream's counter
        {"name": "(outside the app's code) twisted", "share": 0.1},
    ]
