"""Hypothesis strategies for hostile JSON: values no database stores (NaN, infinities, integers past
64 bits, lone surrogates, U+0000, deep nesting) and the JSON text a careless or hostile sender writes
for them (Python's json module writes NaN, Infinity and escaped lone surrogates without complaint)."""
from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

HOSTILE_NUMBERS = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -0.0, 5e-324,
                                   2**63, -(2**63) - 1, 2**64, 10**30, -(10**400)])
HOSTILE_TEXT = st.lists(st.one_of(
    st.characters(categories=["Cs"]),  # a lone surrogate, high or low
    st.just("\x00"), st.just("\U0001f600"), st.just("\ud83d\ude00"),  # a pair as two code points
    st.characters(codec="utf-8", exclude_characters="\x00"),
), max_size=8).map("".join)
LEAVES = st.one_of(HOSTILE_NUMBERS, HOSTILE_TEXT, st.none(), st.booleans(), st.integers(-5, 5))


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


HOSTILE_VALUES = st.one_of(
    st.recursive(LEAVES, lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(HOSTILE_TEXT, st.text(max_size=4)), children, max_size=3),
    ), max_leaves=8),
    st.builds(nested, st.integers(60, 400), LEAVES),
)


def hostile_json_text(value: Any) -> str:
    """What Python's json module writes for `value`: NaN, Infinity, \\ud800 and \\u0000 escapes."""
    return json.dumps(value)


def encodable(frame: Any) -> bool:
    """Whether a frame can go out as a WebSocket text frame (UTF-8) and be read back as JSON."""
    try:
        json.loads(json.dumps(frame, ensure_ascii=False, allow_nan=False).encode())
    except (ValueError, UnicodeEncodeError):
        return False
    return True
