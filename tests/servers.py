"""Real server processes for end-to-end tests: daphne workers on the test database."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_url() -> str:
    """The URL of the database the test run uses, for processes the tests start."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    if connection.vendor == "postgresql":
        auth = settings["USER"] + (f":{settings['PASSWORD']}" if settings.get("PASSWORD") else "")
        host = settings.get("HOST") or "localhost"
        if host.startswith("/"):
            return f"postgres://{auth}@/{settings['NAME']}?host={host}&port={settings.get('PORT') or 5432}"
        return f"postgres://{auth}@{host}:{settings.get('PORT') or 5432}/{settings['NAME']}"
    raise RuntimeError(f"no URL for the {connection.vendor} test database")


def scripted_worker_env(model_server: Any, **extra: str) -> dict[str, str]:
    """A worker's environment that points the app at the scripted model server (and only at it)."""
    return {"LLM_MODEL": "openai/scripted", "LLM_API_BASE": model_server.base_url, "LLM_API_KEY": "k",
            "LLM_MODELS": "", "LOCAL_MODEL_DELAY_MS": "0", **extra}


class DaphneWorker:
    """One daphne process serving config.asgi on 127.0.0.1, with the given environment."""

    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        # The browser tests set DJANGO_ALLOW_ASYNC_UNSAFE in this process (see tests/browser/conftest.py):
        # a server keeps Django's async-safety checks all the same.
        inherited = {name: value for name, value in os.environ.items() if name != "DJANGO_ALLOW_ASYNC_UNSAFE"}
        self.env = {**inherited, "DATABASE_URL": test_database_url(), **env}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    def start(self, timeout: float = 60) -> DaphneWorker:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "config.asgi:application"],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited: {self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)  # polling a port that has no readiness event
        raise RuntimeError("daphne did not start listening")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout)

    def output(self) -> str:
        if self.process is None or self.process.stdout is None or self.process.poll() is None:
            return ""
        return self.process.stdout.read().decode(errors="replace")[-5000:]

    def __enter__(self) -> DaphneWorker:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
