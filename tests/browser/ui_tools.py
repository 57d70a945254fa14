"""Tools that only the browser tests' server offers (TOOL_MODULES): progress, data parts and notes to show."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

from chatrooms.tools import ToolContext, tool

GATE_ENV = "BROWSER_TOOLS_GATE"  # a file path: count_in_stages waits at its first stage until it exists


@tool("Count to three in stages, reporting progress and data parts on the way.")
async def count_in_stages(context: ToolContext):
    context.data("stage", {"stage": "starting"}, id="s1")
    context.data("log", {"line": "begun"})
    context.data("progress", {"text": "counting sheep"}, transient=True)
    yield {"done": 1, "of": 3}  # shown at once, as progress
    gate = Path(os.environ[GATE_ENV])
    # The test opens the gate once it has seen the first stage: the page shows progress for as long as
    # it needs to be checked, with no timing to guess. (A file: the test runs in another process.)
    while not gate.exists():
        await asyncio.sleep(0.05)
    context.data("stage", {"stage": "finished"}, id="s1")
    context.data("log", {"line": "ended"})
    context.data("notice", {"kind": "info", "text": "Counting is an estimate."}, id="counting")
    yield {"done": 2, "of": 3}
    yield {"done": 3, "of": 3}
