"""Where a profiled server spent its time: py-spy's folded stacks summed by function and by package."""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

from ..server_processes import ROOT

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
STDLIB = re.compile(r"/lib/python3\.\d+/")
PROJECT_PACKAGES = {"chatrooms", "streaming", "config"}


def _frame_parts(frame: str) -> tuple[str, str]:
    """(`function (file)` without the line number and with a short path, the package or top module
    of the file). py-spy's --full-filenames tells a project file from a library's."""
    found = FRAME.match(frame.strip())
    if not found:
        return frame.strip(), frame.strip()
    path = found.group("file")
    if "/site-packages/" in path:
        short = path.split("/site-packages/", 1)[1]
    elif path.startswith(f"{ROOT}/"):
        short = path.removeprefix(f"{ROOT}/")
    elif STDLIB.search(path):
        short = STDLIB.split(path, 1)[1]
    else:
        short = path
    package = short.split("/", 1)[0].removesuffix(".py")
    return f"{found.group('function')} ({short})", package


def _innermost_project_function(frames: list[tuple[str, str]]) -> str:
    """The app's own function nearest the leaf: which of its code paths a sample's time went to,
    the libraries it called included. benchstream's hooks (its statement counter wraps every SQL
    statement) are not the app's. A sample with no such frame: its leaf's package."""
    for function, package in reversed(frames):
        if package in PROJECT_PACKAGES and not function.split(" (", 1)[-1].startswith("chatrooms/benchmark/"):
            return function
    return f"(outside the app's code) {frames[-1][1]}"


def summarise_folded_stacks(text: str, top: int = 20) -> dict[str, Any]:
    """Self and inclusive shares of the samples, by function and by package, and by the app's own
    function nearest the leaf, biggest first."""
    total = 0
    self_by_function: Counter[str] = Counter()
    self_by_package: Counter[str] = Counter()
    inclusive_by_function: Counter[str] = Counter()
    inclusive_by_package: Counter[str] = Counter()
    self_by_caller: Counter[tuple[str, str]] = Counter()  # (function, the frame that called it)
    by_project_function: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_parts(frame) for frame in stack.split(";") if frame]
        if not frames:
            continue
        leaf_function, leaf_package = frames[-1]
        self_by_function[leaf_function] += count
        # The caller outside the leaf's own package says which use of a library costs the time.
        caller = next((function for function, package in reversed(frames[:-1]) if package != leaf_package), "-")
        self_by_caller[(leaf_function, caller)] += count
        self_by_package[leaf_package] += count
        by_project_function[_innermost_project_function(frames)] += count
        for function in {function for function, _package in frames}:
            inclusive_by_function[function] += count
        for package in {package for _function, package in frames}:
            inclusive_by_package[package] += count

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"name": name, "share": round(count / total, 4)} for name, count in counter.most_common(top)]

    return {
        "samples": total,
        "selfByPackage": shares(self_by_package),
        "inclusiveByPackage": shares(inclusive_by_package),
        "selfByFunction": shares(self_by_function),
        "inclusiveByFunction": shares(inclusive_by_function),
        "byInnermostProjectFunction": shares(by_project_function),
        "selfByFunctionAndCaller": [
            {"name": function, "calledFrom": caller, "share": round(count / total, 4)}
            for (function, caller), count in self_by_caller.most_common(top)
        ],
    } if total else {"samples": 0}
