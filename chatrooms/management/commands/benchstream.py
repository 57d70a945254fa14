"""manage.py benchstream: measure how the app relays a model's tokens, against two minimal relays, and write the results."""
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chatrooms.benchmark.report import format_table, write_chart, write_json
from chatrooms.benchmark.config import BenchConfig
from chatrooms.benchmark.runner import run_benchmark

SIZES = {  # option: (BenchConfig field, type, help)
    "--streams": ("streams", int, "relay: concurrent streams at full speed (default 20)"),
    "--tokens": ("tokens", int, "tokens per stream, relay and fan-out (default 500)"),
    "--watchers": ("watchers", int, "fan-out: connections watching one stream (default 50)"),
    "--replay-chunks": ("replay_chunks", int, "replay: chunks stored before the join (default 10000)"),
    "--idle-connections": ("idle_connections", int, "idle: open connections (default 500)"),
    "--load-streams": ("load_streams", int, "realistic load: streams (default 50)"),
    "--load-rate": ("load_rate", float, "realistic load: tokens per second per stream (default 50)"),
    "--load-tokens": ("load_tokens", int, "realistic load: tokens per stream (default 500)"),
    "--repeats": ("repeats", int, "full-speed relay runs per system, the median counts (default 3)"),
}


class Command(BaseCommand):
    help = ("Start a model server that streams numbered, time-stamped tokens, the app under daphne (or use "
            "--url) and two baselines (A: a minimal relay parsing the SSE itself; B: the same through "
            "litellm), then measure relay throughput and latency, fan-out, replay, idle memory per "
            "connection, database statements per chunk and the recorder's cost. Prints a table and writes "
            "results.json and chart.png to --out.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", type=Path, help="results folder (default var/bench/<UTC timestamp>/)")
        parser.add_argument("--quick", action="store_true", help="every measurement at a tiny size (seconds)")
        for option, (_field, kind, text) in SIZES.items():
            parser.add_argument(option, type=kind, help=text)
        parser.add_argument("--redis", metavar="URL", default="", help="channel layer on this Redis (default in-memory)")
        parser.add_argument("--database-url", metavar="URL", default="",
                            help="the app's database (default a fresh SQLite file in --out); the run's "
                                 "accounts and rooms are removed again")
        parser.add_argument("--url", default="", help="measure a server already running here (http://host:port) "
                                                      "instead of starting one; it must use --model-port's server")
        parser.add_argument("--username", default="", help="with --url: the account to log in as")
        parser.add_argument("--password", default="", help="with --url: its password")
        parser.add_argument("--server-pid", type=int, help="with --url: the server's process id, for idle memory")
        parser.add_argument("--model-port", type=int, help="port of the model server (default a free one)")
        parser.add_argument("--profile", action="store_true",
                            help="sample the app and baseline C with py-spy during one more full-speed relay "
                                 "run and one more realistic-load run")

    def handle(self, *args: object, **options: object) -> None:
        if options["url"] and not (options["username"] and options["password"]):
            raise CommandError("--url needs --username and --password.")
        out = options["out"] or Path(settings.VAR_DIR) / "bench" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        sizes = {field: options[option.lstrip("-").replace("-", "_")] for option, (field, _kind, _text) in SIZES.items()}
        sizes = {field: value for field, value in sizes.items() if value is not None}
        connection = dict(
            database_url=options["database_url"], redis_url=options["redis"], url=options["url"],
            username=options["username"], password=options["password"], server_pid=options["server_pid"],
            model_port=options["model_port"], profile=options["profile"],
            command=shlex.join(["python", "manage.py", "benchstream", *sys.argv[2:]]) if "benchstream" in sys.argv
            else "python manage.py benchstream",
        )
        config = (BenchConfig.scaled_down(out, **sizes, **connection) if options["quick"]
                  else BenchConfig(out_dir=out, **sizes, **connection))
        results = run_benchmark(config, say=self.stdout.write)
        write_json(results, out / "results.json")
        charted = write_chart(results, out / "chart.png")
        self.stdout.write("")
        self.stdout.write(format_table(results))
        self.stdout.write(f"\nresults: {out / 'results.json'}" + (f", chart: {out / 'chart.png'}" if charted else
                                                                   " (pip install -e '.[bench]' for the chart)"))
