"""Real server processes for end-to-end tests: daphne workers on the test database."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.db import connection

from chatrooms.server_processes import ROOT, DaphneProcess, free_port

__all__ = ["ROOT", "DaphneWorker", "free_port", "scripted_worker_env", "test_database_url"]


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


class DaphneWorker(DaphneProcess):
    """One daphne process serving config.asgi on 127.0.0.1, on the test database, with the given environment."""

    def __init__(self, env: dict[str, str], port: int | None = None, log_path: Path | None = None) -> None:
        # The browser tests set DJANGO_ALLOW_ASYNC_UNSAFE in this process (see tests/browser/conftest.py):
        # a server keeps Django's async-safety checks all the same.
        inherited = {name: value for name, value in os.environ.items() if name != "DJANGO_ALLOW_ASYNC_UNSAFE"}
        super().__init__({"DATABASE_URL": test_database_url(), **env}, port, base_env=inherited, log_path=log_path)

    def start(self, timeout: float = 60) -> DaphneWorker:
        super().start(timeout)
        return self

    def __enter__(self) -> DaphneWorker:
        return self.start()
