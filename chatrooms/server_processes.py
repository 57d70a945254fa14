"""Local server processes on 127.0.0.1 (daphne workers and helpers), started and stopped for end-to-end tests and benchstream."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent

# daphne's options in production (deploy/chatrooms@.service, the README), so that tests and benchstream run
# workers the same way. A socket that reads nothing (its peer stopped reading) answers no ping: it is
# dropped within --ping-interval + --ping-timeout + 2 s (daphne's check runs every 2 s), which bounds
# what Twisted buffers for it. A crowd connecting at once (a worker restarted: every browser comes back)
# is admitted within --websocket_connect_timeout; past it the opening is dropped.
DAPHNE_OPTIONS = ("--ping-interval", "20", "--ping-timeout", "30", "--websocket_connect_timeout", "60")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A command that listens on a port of 127.0.0.1: started, awaited until it accepts, stopped."""

    def __init__(
        self, argv: list[str], *, port: int, env: Mapping[str, str], name: str = "server", log_path: Path | None = None
    ) -> None:
        self.argv = argv
        self.port = port
        self.env = dict(env)
        self.name = name
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 60) -> ServerProcess:
        # A log file, not a pipe, for long runs: nobody reads a pipe while the server runs, and a full
        # pipe would stall it.
        if self.log_path is not None:
            self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=self._log or subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)  # polling a port that has no readiness event
        self.stop()
        raise RuntimeError(f"{self.name} did not start listening on port {self.port}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.process is None:
            return None
        try:
            if self.process.poll() is None:
                self.process.send_signal(sig)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout)
            return self.process.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def output(self) -> str:
        """The last of what the process printed: its log file, or its pipe once it has exited."""
        if self.log_path is not None and self.log_path.exists():
            return self.log_path.read_bytes().decode(errors="replace")[-5000:]
        if self.process is None or self.process.stdout is None or self.process.poll() is None:
            return ""
        return self.process.stdout.read().decode(errors="replace")[-5000:]

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class DaphneProcess(ServerProcess):
    """One daphne process serving an ASGI application of this project, with the given environment."""

    def __init__(
        self,
        env: Mapping[str, str],
        port: int | None = None,
        *,
        application: str = "config.asgi:application",
        base_env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        port = port or free_port()
        super().__init__(
            [sys.executable, "-m", "daphne", *DAPHNE_OPTIONS, "-b", "127.0.0.1", "-p", str(port), application],
            port=port, env={**(os.environ if base_env is None else base_env), **env}, name="daphne",
            log_path=log_path,
        )

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    def start(self, timeout: float = 60) -> DaphneProcess:
        super().start(timeout)
        return self

    def __enter__(self) -> DaphneProcess:
        return self.start()
