"""The app as benchstream serves it: config.asgi's application, with hooks for the benchmark under /__bench__/."""
from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from config.asgi import application as chatrooms_application  # first: it sets up Django

from channels.db import database_sync_to_async  # noqa: E402
from django.db.backends.signals import connection_created  # noqa: E402

from streaming.recorder import StreamRecorder  # noqa: E402

from . import fixtures  # noqa: E402

STATEMENT_TARGET = re.compile(r'\b(?:FROM|INTO|UPDATE)\s+"?([\w.]+)"?', re.IGNORECASE)


def statement_label(sql: str) -> str:
    """`SELECT chatrooms_room`, `INSERT streaming_streamchunk`, `SAVEPOINT`: what a statement does, to what."""
    verb = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
    target = STATEMENT_TARGET.search(sql) if verb in {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"} else None
    return f"{verb} {target.group(1)}" if target else verb


class StatementCounter:
    """Every SQL statement of this process, by label; installed on each database connection as it opens."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # statements run on several threads (thread_sensitive=False writes)
        self.by_label: Counter[str] = Counter()

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        label = statement_label(sql)
        with self._lock:
            self.by_label[label] += 1
        return execute(sql, params, many, context)

    def watch(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        if self not in connection.execute_wrappers:
            connection.execute_wrappers.append(self)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"total": sum(self.by_label.values()), "byStatement": dict(self.by_label.most_common())}

    def reset(self) -> dict[str, Any]:
        with self._lock:
            self.by_label.clear()
        return {"total": 0, "byStatement": {}}


STATEMENTS = StatementCounter()
connection_created.connect(STATEMENTS.watch, weak=False)


RECORDER_ADD = StreamRecorder.add


def store_nothing(self: StreamRecorder, index: int, chunk: dict[str, Any], body: str) -> None:
    """StreamRecorder.add with the recorder off: the chunk is neither buffered nor written."""


async def _recorder(arguments: dict[str, Any]) -> dict[str, Any]:
    """Recorder on or off for the streams that start from now on (between runs, never during one)."""
    StreamRecorder.add = RECORDER_ADD if arguments["store"] else store_nothing  # type: ignore[method-assign]
    return {"store": arguments["store"]}


def _in_database(function: Callable[..., Any]) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    return lambda arguments: database_sync_to_async(function)(**arguments)


async def _statements(arguments: dict[str, Any]) -> dict[str, Any]:
    return STATEMENTS.snapshot()


async def _statements_reset(arguments: dict[str, Any]) -> dict[str, Any]:
    return STATEMENTS.reset()


# Only benchstream's own daphne process serves this module, on 127.0.0.1 for the length of a run;
# config.asgi and the app stay as they are. The hooks make accounts and a stored stream to replay,
# count SQL statements, and switch the recorder off, to measure what it costs.
HOOKS: dict[tuple[str, str], Callable[[dict[str, Any]], Awaitable[Any]]] = {
    ("POST", "/__bench__/accounts"): _in_database(fixtures.accounts_create),
    ("POST", "/__bench__/accounts/remove"): _in_database(fixtures.accounts_remove),
    ("POST", "/__bench__/replay"): _in_database(fixtures.replay_stream_seed),
    ("POST", "/__bench__/replay/finish"): _in_database(fixtures.replay_stream_finish),
    ("GET", "/__bench__/statements"): _statements,
    ("POST", "/__bench__/statements/reset"): _statements_reset,
    ("POST", "/__bench__/recorder"): _recorder,
}


async def bench_hook(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                     send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    hook = HOOKS.get((scope["method"], scope["path"]))
    status, result = (404, {"error": "no such hook"}) if hook is None else (200, await hook(json.loads(body or b"{}")))
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(result).encode()})


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"].startswith("/__bench__/"):
        await bench_hook(scope, receive, send)
    else:
        await chatrooms_application(scope, receive, send)
