"""Fitting a conversation into the model's context window: older tool outputs are compacted first, then older turns dropped."""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from functools import cache
from itertools import pairwise
from typing import Any

from .llm import get_litellm

TokenCounter = Callable[[list[dict[str, Any]]], int]

COMPACTED_PREVIEW_CHARS = 200
COMPACTED_NOTE = "older tool output left out to fit the context"
# Token counts of single messages kept across calls (by a digest of the message): a reply calls the
# fitting before every model step with mostly the same messages, and a large tool output costs
# milliseconds to tokenize each time.
MESSAGE_COUNT_CACHE_SIZE = 4096


def fit_messages_to_budget(
    messages: list[dict[str, Any]], *, budget_tokens: int, count_tokens: TokenCounter
) -> list[dict[str, Any]]:
    """The messages, made to fit `budget_tokens`: tool outputs of older turns compacted (oldest
    first), then older turns dropped whole (oldest first). The system message and the current turn
    (the last user message and everything after it) always stay; if they alone do not fit, the tool
    outputs of the current turn's earlier steps are compacted too, and the result may exceed the
    budget. A new list; the input and its dicts are never changed (unchanged dicts are shared)."""
    sizes = _MessageSizes(count_tokens)
    fitted = list(messages)
    total = sum(sizes.of(message) for message in fitted)
    if total <= budget_tokens:
        return fitted

    first = 1 if fitted and fitted[0].get("role") == "system" else 0
    current = _current_turn_start(fitted, first)

    def compact_until_fits(indexes: list[int]) -> None:
        nonlocal total
        for index in indexes:
            if total <= budget_tokens:
                return
            original = fitted[index]
            compacted = _compacted(original)
            if compacted is None:
                continue
            saving = sizes.of(original) - sizes.of(compacted)
            if saving > 0:
                fitted[index] = compacted
                total -= saving

    compact_until_fits([i for i in range(first, current) if fitted[i].get("role") == "tool"])
    if total > budget_tokens:
        dropped_until = first
        for turn_start, turn_end in pairwise([*_turn_starts(fitted, first, current), current]):
            if total <= budget_tokens:
                break
            total -= sum(sizes.of(message) for message in fitted[turn_start:turn_end])
            dropped_until = turn_end
        fitted[first:dropped_until] = []
        current -= dropped_until - first
    if total > budget_tokens:
        # The last assistant step's results are what the model is answering now: they stay whole.
        last_step = max((i for i in range(current, len(fitted)) if fitted[i].get("role") == "assistant"), default=current)
        compact_until_fits([i for i in range(current, last_step) if fitted[i].get("role") == "tool"])
    return fitted


def _current_turn_start(messages: list[dict[str, Any]], first: int) -> int:
    """Where the last user message is; without one, the whole conversation is the current turn."""
    for index in range(len(messages) - 1, first - 1, -1):
        if messages[index].get("role") == "user":
            return index
    return first


def _turn_starts(messages: list[dict[str, Any]], first: int, current: int) -> list[int]:
    """Where each older turn begins: at each user message, and at `first` for any assistant steps
    before the first user message (a room whose oldest messages were removed). A turn ends where
    the next begins, so an assistant's tool calls and their results are always in the same turn."""
    starts = [i for i in range(first, current) if messages[i].get("role") == "user"]
    if first < current and (not starts or starts[0] != first):
        starts.insert(0, first)
    return starts


def _compacted(message: dict[str, Any]) -> dict[str, Any] | None:
    """A tool message whose output is replaced by a short note; None if the note would be no shorter,
    or the output is such a note already (a caller may fit what it fitted before)."""
    content = message.get("content")
    text = content if isinstance(content, str) else json.dumps(content, default=str)
    if len(text) <= COMPACTED_PREVIEW_CHARS or text.startswith(_COMPACTED_PREFIX):
        return None
    note = {"compacted": True, "note": COMPACTED_NOTE, "preview": text[:COMPACTED_PREVIEW_CHARS]}
    return {**message, "content": json.dumps(note, ensure_ascii=False)}


_COMPACTED_PREFIX = json.dumps({"compacted": True})[:-1]


class _MessageSizes:
    """Each message counted once, by identity, however often the fitting asks."""

    def __init__(self, count_tokens: TokenCounter) -> None:
        self._count_tokens = count_tokens
        # The message is kept with its count so that its id cannot be reused by another object.
        self._by_id: dict[int, tuple[dict[str, Any], int]] = {}

    def of(self, message: dict[str, Any]) -> int:
        known = self._by_id.get(id(message))
        if known is None:
            known = self._by_id[id(message)] = (message, self._count_tokens([message]))
        return known[1]


@cache
def litellm_token_counter(model: str) -> TokenCounter:
    """Counts messages the way litellm does for `model`, offline. One counter per model for the
    life of the process, remembering recent single-message counts across calls."""
    litellm = get_litellm()
    tokenizer = _bundled_tokenizer_for(litellm, model)
    counts: dict[bytes, int] = {}
    evicting = threading.Lock()

    def count_tokens(messages: list[dict[str, Any]]) -> int:
        key = hashlib.blake2b(json.dumps(messages, sort_keys=True, default=str).encode(), digest_size=16).digest()
        count = counts.get(key)
        if count is None:
            # litellm adds the 3 tokens that prime a reply to every count, so a sum over single
            # messages runs a few tokens per message high: on the safe side of the budget.
            count = litellm.token_counter(model=model, messages=messages, custom_tokenizer=tokenizer)
            with evicting:  # replies on several threads may count at once
                if len(counts) >= MESSAGE_COUNT_CACHE_SIZE:
                    del counts[next(iter(counts))]  # the oldest entry
                counts[key] = count
        return count

    return count_tokens


def _bundled_tokenizer_for(litellm: Any, model: str) -> dict[str, Any] | None:
    """None where litellm's own choice ships with it (tiktoken's cl100k/o200k files, its Anthropic
    tokenizer); else its bundled tiktoken encoding. For Llama, Replicate and Cohere models litellm
    fetches a tokenizer from Hugging Face on every count that has not succeeded yet: offline, each
    count would spend some 20 s in retries before falling back to tiktoken anyway."""
    tokenizer_kind = getattr(litellm.utils, "huggingface_tokenizer_kind", None)
    if tokenizer_kind is not None and tokenizer_kind(model) in (None, "anthropic"):
        return None
    return {"type": "openai_tokenizer", "tokenizer": litellm.encoding}
