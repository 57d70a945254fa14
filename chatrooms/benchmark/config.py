"""What benchstream measures and at what size (BenchConfig), read by the runner and the report."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass
class BenchConfig:
    """What to measure and at what size; the defaults are the issue's."""

    out_dir: Path
    streams: int = 20  # relay: streams at full speed...
    tokens: int = 500  # ...of this many tokens each
    watchers: int = 50  # fan-out: connections watching one stream
    replay_chunks: int = 10_000
    idle_connections: int = 500
    load_streams: int = 50  # realistic load: streams...
    load_rate: float = 50  # ...at this many tokens per second each...
    load_tokens: int = 500  # ...of this many tokens, started over...
    load_stagger: float = 1.0  # ...this many seconds
    repeats: int = 3  # full-speed relay runs per system; the median counts
    replay_repeats: int = 3
    warm_up_tokens: int = 20
    database_url: str = ""  # empty: a fresh SQLite file in out_dir
    redis_url: str = ""  # empty: the in-memory channel layer
    url: str = ""  # a server someone else runs, instead of starting the app
    username: str = ""
    password: str = ""
    server_pid: int | None = None
    model_port: int | None = None
    profile: bool = False  # py-spy on the app and on C during one more full-speed relay run and one more load run
    command: str = ""
    quick: bool = False
    run_id: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y%m%d%H%M%S"))

    @classmethod
    def scaled_down(cls, out_dir: Path, **overrides: Any) -> BenchConfig:
        """--quick: every measurement, at a size that runs in seconds."""
        quick = dict(streams=3, tokens=60, watchers=4, replay_chunks=300, idle_connections=20, load_streams=3,
                     load_tokens=25, load_stagger=0.2, repeats=1, replay_repeats=1, warm_up_tokens=5, quick=True)
        return cls(out_dir=out_dir, **{**quick, **overrides})

    @property
    def account_count(self) -> int:
        return max(self.streams, self.load_streams, self.watchers, 1)
