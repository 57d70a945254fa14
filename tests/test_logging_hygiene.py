"""Nothing logs what people write: no logging call at INFO or above passes message text, prompts or parts."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.servers import ROOT

LOGGED_LEVELS = {"info", "warning", "error", "exception", "critical", "log"}
# Names that hold what people (or the model) wrote; a logging call may not pass them.
CONTENT_WORDS = ("content", "text", "prompt", "parts", "delta", "body", "output", "arguments", "message.")


def logging_calls(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    calls = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOGGED_LEVELS
                and isinstance(node.func.value, ast.Name) and node.func.value.id in {"logger", "logging", "log"}):
            arguments = [ast.unparse(argument) for argument in node.args[1:]]
            arguments += [ast.unparse(keyword.value) for keyword in node.keywords if keyword.arg != "exc_info"]
            calls.append((node.lineno, " ".join(arguments)))
    return calls


def test_no_logging_call_passes_message_content():
    offending = []
    for package in ("chatrooms", "streaming", "config"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts or "benchmark" in path.parts or path.name == "scripted_model_server.py":
                continue
            for line, arguments in logging_calls(path):
                if any(word in arguments.lower() for word in CONTENT_WORDS):
                    offending.append(f"{path.relative_to(ROOT)}:{line}: {arguments}")
    assert offending == []
