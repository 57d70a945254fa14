"""The systems benchstream measures (the app under daphne or at --url, and baselines A and B), and the model server they relay."""
from __future__ import annotations

import asyncio
import http.cookiejar
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ..server_processes import ROOT, DaphneProcess, ServerProcess, free_port
from .baseline_relay import SOURCES
from .clients import Account, ChatClient
from .model_server import MODEL

# The app's per-user limits are switched off: the benchmark measures the relay, not the limiter,
# and its clients open more sockets and streams per user than a person would.
LIMITS_OFF = {"RATE_CHAT_PER_MINUTE": "0", "STREAMS_PER_USER": "0", "ROOMS_PER_HOUR": "0", "SOCKETS_PER_USER": "0"}


class Unsupported(Exception):
    """This system cannot take part in a measurement (a server at --url has no hooks)."""


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc/<pid>/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ModelServer:
    """chatrooms.benchmark.model_server in a process of its own, so that it competes with the relay
    for the machine's cores and not for one event loop."""

    def __init__(self, out_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process = ServerProcess(
            [sys.executable, "-m", "chatrooms.benchmark.model_server", "--port", str(self.port)],
            port=self.port, env=os.environ, name="model server", log_path=out_dir / "model-server.log",
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ModelServer:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()


class System:
    """One relay under test: where its clients connect, the accounts they use, and its process."""

    name = ""
    label = ""
    ws_url = ""
    origin = ""
    accounts: list[Account]
    pid: int | None = None
    can_switch_recorder = False

    def start(self, account_count: int) -> System:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop what this system started; nothing for a server it did not start."""

    async def seed_replay(self, account: Account, chunks: int) -> tuple[str, str]:
        """A room whose live stream already has `chunks` chunks: (room id, a handle for finish_replay)."""
        raise Unsupported("no way to store a stream on this server")

    async def finish_replay(self, handle: str) -> None:
        """End a seeded stream."""

    def statements(self) -> dict[str, Any] | None:
        """The SQL statements the server has run since the last reset, or None if it cannot tell."""
        return None

    def set_recorder(self, store: bool) -> None:
        """Let new streams store their chunks, or not (only the app started by benchstream can)."""
        raise Unsupported("this server has no recorder switch")

    def reset_statements(self) -> None:
        """Start counting SQL statements from zero."""


class AppSystem(System):
    """The app under daphne, serving chatrooms.benchmark.server_app on the benchmark's database."""

    name = "app"
    label = "app"
    can_switch_recorder = True

    def __init__(self, *, model_url: str, database_url: str, redis_url: str, out_dir: Path, run_id: str = "") -> None:
        self.database_url = database_url
        self.account_prefix = f"bench{run_id}-"
        env = {
            "DATABASE_URL": database_url, "REDIS_URL": redis_url, "LLM_MODEL": f"openai/{MODEL}", "LLM_MODELS": "",
            "LLM_API_BASE": model_url, "LLM_API_KEY": "k", "LOG_LEVEL": "WARNING", **LIMITS_OFF,
        }
        self.process = DaphneProcess(env, application="chatrooms.benchmark.server_app:application",
                                     log_path=out_dir / "app.log")
        self.ws_url, self.origin = self.process.ws_url, self.process.http_url
        self.accounts = []

    def start(self, account_count: int) -> AppSystem:
        migrate(self.database_url)
        self.process.start()
        self.pid = self.process.pid
        made = self._hook("POST", "/__bench__/accounts", {"prefix": self.account_prefix, "count": account_count})
        self.accounts = [Account(entry["username"], entry["cookie"]) for entry in made]
        return self

    def stop(self) -> None:
        self.process.stop()

    def set_recorder(self, store: bool) -> None:
        self._hook("POST", "/__bench__/recorder", {"store": store})

    def remove_accounts(self) -> None:
        self._hook("POST", "/__bench__/accounts/remove", {"prefix": self.account_prefix})

    def _hook(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = json.dumps(payload).encode() if method == "POST" else None
        request = urllib.request.Request(self.process.http_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    async def seed_replay(self, account: Account, chunks: int) -> tuple[str, str]:
        seeded = await asyncio.to_thread(self._hook, "POST", "/__bench__/replay",
                                         {"username": account.username, "chunks": chunks})
        return seeded["roomId"], seeded["streamId"]

    async def finish_replay(self, handle: str) -> None:
        await asyncio.to_thread(self._hook, "POST", "/__bench__/replay/finish", {"stream_id": handle})

    def statements(self) -> dict[str, Any] | None:
        return self._hook("GET", "/__bench__/statements")

    def reset_statements(self) -> None:
        self._hook("POST", "/__bench__/statements/reset", {})


class ExternalApp(System):
    """A server someone else runs at --url, logged in to with one account for every client. It must
    relay benchstream's model server (LLM_API_BASE) with its limits off; it has no hooks."""

    name = label = "app"

    def __init__(self, *, url: str, username: str, password: str, pid: int | None) -> None:
        self.url = url.rstrip("/")
        self.username, self.password = username, password
        self.origin = self.url
        self.ws_url = self.url.replace("http", "ws", 1) + "/ws/chat/"
        self.pid = pid
        self.accounts = []

    def start(self, account_count: int) -> ExternalApp:
        account = Account(self.username, f"sessionid={self._log_in()}")
        self.accounts = [account] * account_count
        return self

    def _log_in(self) -> str:
        """The README's way: GET the login page for a CSRF cookie, POST the form, keep the session cookie."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        opener.open(f"{self.url}/accounts/login/")
        csrf = next(cookie.value for cookie in jar if cookie.name == "csrftoken")
        form = urllib.parse.urlencode({"username": self.username, "password": self.password,
                                       "csrfmiddlewaretoken": csrf})
        opener.open(urllib.request.Request(f"{self.url}/accounts/login/", data=form.encode(),
                                           headers={"Referer": f"{self.url}/accounts/login/"}))
        session = next((cookie.value for cookie in jar if cookie.name == "sessionid"), None)
        if session is None:
            raise RuntimeError(f"logging in to {self.url} as {self.username} failed")
        return session


class BaselineSystem(System):
    """A baseline relay (chatrooms.benchmark.baseline_relay) in a process of its own."""

    def __init__(self, *, source: str, model_url: str, out_dir: Path) -> None:
        self.name, self.label = SOURCES[source]
        port = free_port()
        self.process = ServerProcess(
            [sys.executable, "-m", "chatrooms.benchmark.baseline_relay", "--source", source, "--port", str(port),
             "--model-url", model_url],
            port=port, env=os.environ, name=f"baseline {self.name}", log_path=out_dir / f"baseline-{self.name}.log",
        )
        self.ws_url, self.origin = f"ws://127.0.0.1:{port}/", f"http://127.0.0.1:{port}"
        self.accounts = []

    def start(self, account_count: int) -> BaselineSystem:
        self.process.start()
        self.pid = self.process.pid
        self.accounts = [Account(f"viewer{number}", None) for number in range(account_count)]
        return self

    def stop(self) -> None:
        self.process.stop()

    async def seed_replay(self, account: Account, chunks: int) -> tuple[str, str]:
        client = await ChatClient.connect(self.ws_url, account, origin=self.origin)
        try:
            seeded = await client.request({"type": "bench.seed", "chunks": chunks})
        finally:
            await client.close()
        return seeded["roomId"], seeded["roomId"]


def migrate(database_url: str) -> None:
    """Create the app's tables in the benchmark's database, as scripts/run does."""
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                   env={**os.environ, "DATABASE_URL": database_url}, check=True)
