"""JSON that both databases store and every client reads: strict parsing of JSON from outside, and
safe copies of values (a model's, a tool's, an MCP server's) before they become chunks or rows.

SQLite's JSON check and PostgreSQL's jsonb refuse NaN and Infinity, PostgreSQL refuses U+0000 in
text, and a lone surrogate cannot be encoded as UTF-8 at all (not by the database driver, not by
daphne's WebSocket frame). Python's own json module accepts and produces all three.
"""
from __future__ import annotations

import json
import math
from typing import Any

import orjson

# Safe copies flatten what nests deeper than MAX_DEPTH, and JSON from outside is refused deeper
# than MAX_PARSE_DEPTH (an export wraps a chunk's values in a few levels of its own): no legitimate
# frame, tool output or export nests this deep, and every recursive reader (Python's json, SQLite's
# JSON functions, browsers) has a limit of its own not far above.
MAX_DEPTH = 64
MAX_PARSE_DEPTH = 2 * MAX_DEPTH
TOO_DEEP = "[nested too deeply]"


class UnsafeJSON(ValueError):
    """Text that is not strict JSON, or holds what cannot be stored; the message says which."""


class InvalidJSON(UnsafeJSON):
    """Text that is not JSON at all, as the standard defines it."""


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON the way the standard defines it (orjson: no NaN or Infinity, no number too large
    for a double, no lone surrogate), and refuse U+0000 and nesting deeper than MAX_PARSE_DEPTH."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as error:  # a lone surrogate, escaped or in a str, included
        raise InvalidJSON(f"not valid JSON ({error.msg})") from None
    problem = problem_in(value)
    if problem:
        raise UnsafeJSON(problem)
    return value


def problem_in(value: Any) -> str | None:
    """What in an already-parsed value cannot be stored or sent, or None; iterative, so that deep
    nesting costs no recursion."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "a string holds the NUL character (\\u0000)"
            if not _encodable(item):
                return "a string holds a lone surrogate (an unpaired \\ud800-\\udfff)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "a number is NaN or infinite"
        elif isinstance(item, (dict, list)):
            if depth >= MAX_PARSE_DEPTH:
                return f"nested more than {MAX_PARSE_DEPTH} levels deep"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return None


def utf8_text(text: str) -> str:
    """`text` as UTF-8 can carry it: itself (no copy) if it can be, else with each lone surrogate
    replaced by U+FFFD (and a surrogate pair split into two code points joined again). Every frame a
    socket sends passes here."""
    if text.isascii() or _encodable(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def safe_text(text: str) -> str:
    """Text that can be stored and sent: utf8_text, with U+0000 replaced by U+FFFD too."""
    return utf8_text(text).replace("\x00", "\ufffd")


def storable(value: Any, *, depth: int = 0) -> Any:
    """A copy of `value` as plain JSON data that every database and client takes: strings made safe,
    NaN and infinities as null, integers beyond 64 bits as floats (as orjson reads them; null past a
    float's range, where Python cannot even print them), tuples as lists, keys as strings, any other
    object as its str(), and anything nested deeper than MAX_DEPTH as a marker string."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if -(2**63) <= value < 2**64:
            return value
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, (dict, list, tuple)):
        if depth >= MAX_DEPTH:
            return TOO_DEEP
        if isinstance(value, dict):
            return {safe_text(str(key)): storable(item, depth=depth + 1) for key, item in value.items()}
        return [storable(item, depth=depth + 1) for item in value]
    return safe_text(str(value))


def dumps_storable(value: Any) -> tuple[Any, str]:
    """(value, its compact JSON text), both safe to store and send. Values that are safe already
    (nearly all) cost one encoding and two scans of the text; others are copied with `storable`."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        safe = "\\u0000" not in text and _encodable(text)
    except (ValueError, TypeError, RecursionError):
        safe = False
    if not safe:
        value = storable(value)
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value, text


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
