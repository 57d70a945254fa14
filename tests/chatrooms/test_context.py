"""Fitting a conversation into the context budget: compact old tool outputs, drop old turns, keep the current turn."""
from __future__ import annotations

import copy
import json
import socket
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatrooms.context import COMPACTED_PREVIEW_CHARS, fit_messages_to_budget, litellm_token_counter


def tokens_of(message: dict[str, Any]) -> int:
    """A stand-in tokenizer: a few tokens per message plus one per four characters of it."""
    return 3 + len(json.dumps(message)) // 4


class RecordingCounter:
    """count_tokens that checks it is asked about one message at a time, and remembers how often."""

    def __init__(self) -> None:
        self.asked: Counter[int] = Counter()
        self.keep: list[dict[str, Any]] = []  # so that ids stay unique while the test runs

    def __call__(self, messages: list[dict[str, Any]]) -> int:
        assert len(messages) == 1
        self.asked[id(messages[0])] += 1
        self.keep.append(messages[0])
        return tokens_of(messages[0])


def total(messages: list[dict[str, Any]]) -> int:
    return sum(tokens_of(m) for m in messages)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def calls(*call_ids: str, text: str | None = None) -> dict[str, Any]:
    return {"role": "assistant", "content": text, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": "search", "arguments": "{}"}} for call_id in call_ids
    ]}


def result(call_id: str, size: int) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"data": "x" * size})}


def answer(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def compacted_copy(message: dict[str, Any]) -> dict[str, Any]:
    note = {"compacted": True, "note": "older tool output left out to fit the context",
            "preview": message["content"][:COMPACTED_PREVIEW_CHARS]}
    return {**message, "content": json.dumps(note)}


def is_compacted(message: dict[str, Any]) -> bool:
    return message["role"] == "tool" and json.loads(message["content"]).get("compacted") is True


def conversation() -> list[dict[str, Any]]:
    return [
        SYSTEM,
        user("first"), calls("a1"), result("a1", 2000), answer("first answer"),
        user("second"), calls("b1", "b2"), result("b1", 2000), result("b2", 2000), answer("second answer"),
        user("third"), calls("c1"), result("c1", 2000),
    ]


def test_a_conversation_that_fits_is_returned_as_it_is():
    messages = conversation()
    fitted = fit_messages_to_budget(messages, budget_tokens=total(messages), count_tokens=RecordingCounter())
    assert fitted == messages and fitted is not messages
    assert all(a is b for a, b in zip(fitted, messages, strict=True))


def test_older_tool_outputs_are_compacted_oldest_first_until_it_fits():
    messages = conversation()
    before = copy.deepcopy(messages)
    saving = tokens_of(messages[3]) - tokens_of(compacted_copy(messages[3]))
    fitted = fit_messages_to_budget(messages, budget_tokens=total(messages) - saving, count_tokens=RecordingCounter())

    assert messages == before
    assert len(fitted) == len(messages)
    assert is_compacted(fitted[3]) and not is_compacted(fitted[7])
    assert json.loads(fitted[3]["content"]) == {
        "compacted": True, "note": "older tool output left out to fit the context",
        "preview": messages[3]["content"][:COMPACTED_PREVIEW_CHARS]}
    assert fitted[3]["tool_call_id"] == "a1"
    assert total(fitted) == total(messages) - saving
    # The current turn's tool output is what the model is answering: it stays whole.
    assert fitted[-1] is messages[-1]


def test_older_turns_are_dropped_whole_when_compacting_is_not_enough():
    messages = conversation()
    current = messages[10:]
    budget = total([SYSTEM, *current]) + 50
    fitted = fit_messages_to_budget(messages, budget_tokens=budget, count_tokens=RecordingCounter())
    assert fitted[0] is SYSTEM
    assert fitted[1:] == current
    assert total(fitted) <= budget


def test_turns_that_still_fit_keep_their_tool_outputs_compacted():
    messages = conversation()
    second_turn = [messages[5], messages[6], compacted_copy(messages[7]), compacted_copy(messages[8]), messages[9]]
    expected = [SYSTEM, *second_turn, *messages[10:]]
    fitted = fit_messages_to_budget(messages, budget_tokens=total(expected), count_tokens=RecordingCounter())
    assert fitted == expected
    assert fitted[-1] is messages[-1]


def test_when_system_and_current_turn_alone_are_too_big_earlier_steps_are_compacted_but_not_the_last():
    messages = [SYSTEM, user("old"), answer("old answer"),
                user("now"), calls("s1"), result("s1", 3000), calls("s2"), result("s2", 3000)]
    fitted = fit_messages_to_budget(messages, budget_tokens=100, count_tokens=RecordingCounter())
    assert [m["role"] for m in fitted] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert is_compacted(fitted[3]) and fitted[5] is messages[7]
    assert total(fitted) > 100  # over the budget, but nothing the turn needs is gone


def test_small_tool_outputs_are_not_replaced_by_a_longer_note():
    messages = [user("old"), calls("t"), result("t", 10), answer("ok"), user("now")]
    fitted = fit_messages_to_budget(messages, budget_tokens=total(messages) - 1, count_tokens=RecordingCounter())
    assert fitted == messages[4:]


def test_steps_before_the_first_user_message_are_an_older_turn_of_their_own():
    """A room whose oldest messages were removed may start with an answer's tool calls."""
    messages = [calls("p"), result("p", 100), answer("pruned"), user("kept"), answer("yes"), user("now")]
    budget = total(messages[3:]) + 1
    fitted = fit_messages_to_budget(messages, budget_tokens=budget, count_tokens=RecordingCounter())
    assert fitted == messages[3:]


def test_without_a_user_message_everything_is_the_current_turn():
    messages = [SYSTEM, answer("hello"), calls("x"), result("x", 1000), answer("done")]
    fitted = fit_messages_to_budget(messages, budget_tokens=1, count_tokens=RecordingCounter())
    # Nothing is dropped; the output before the last step is compacted, as in any current turn.
    assert fitted == [*messages[:3], compacted_copy(messages[3]), messages[4]]


def test_each_message_is_counted_once_one_at_a_time():
    messages = conversation()
    counter = RecordingCounter()
    fit_messages_to_budget(messages, budget_tokens=0, count_tokens=counter)
    assert counter.asked and max(counter.asked.values()) == 1
    assert all(counter.asked[id(m)] == 1 for m in messages)


# -- the property ------------------------------------------------------------------------------

text = st.text(alphabet="abcdefghij klmnop", max_size=80)


@st.composite
def steps(draw: st.DrawFn, serial: list[int], final: bool) -> list[dict[str, Any]]:
    """An answer's steps: some with tool calls and their results, maybe one of plain text."""
    out: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 3))):
        ids = []
        for _ in range(draw(st.integers(1, 2))):
            serial[0] += 1
            ids.append(f"call_{serial[0]}")
        out.append(calls(*ids, text=draw(st.none() | text)))
        out.extend(result(call_id, draw(st.integers(0, 900))) for call_id in ids)
    if not final or draw(st.booleans()):
        out.append(answer(draw(text)))
    return out


@st.composite
def conversations(draw: st.DrawFn) -> tuple[list[dict[str, Any]], int]:
    """(messages, where the current turn starts)."""
    serial = [0]
    messages: list[dict[str, Any]] = [{"role": "system", "content": draw(text)}] if draw(st.booleans()) else []
    if draw(st.booleans()):  # the room's oldest messages were removed: it starts mid-answer
        messages += draw(steps(serial, final=False))
    for _ in range(draw(st.integers(0, 4))):
        messages += [user(draw(text)), *draw(steps(serial, final=False))]
    current = len(messages)
    messages += [user(draw(text)), *draw(steps(serial, final=True))]
    return messages, current


def source_indexes(fitted: list[dict[str, Any]], messages: list[dict[str, Any]]) -> list[int]:
    """Where each fitted message came from, in order: the same dict, or a compacted copy of it."""
    indexes, position = [], 0
    for message in fitted:
        while not (messages[position] is message or (
            is_compacted(message) and messages[position]["role"] == "tool"
            and {**messages[position], "content": message["content"]} == message
            and json.loads(message["content"])["preview"] == messages[position]["content"][:COMPACTED_PREVIEW_CHARS]
        )):
            position += 1  # IndexError: not a subsequence
        indexes.append(position)
        position += 1
    return indexes


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations(), st.floats(0, 1.1), st.booleans())
def test_fitting_keeps_what_must_stay_and_fits_whenever_it_can(drawn, budget_share, above_what_must_stay):
    messages, current = drawn
    before = copy.deepcopy(messages)
    # Half the budgets lie between what must stay and everything: where compacting and dropping happen.
    has_system = bool(messages) and messages[0]["role"] == "system"
    floor = total(messages[:int(has_system)] + messages[current:]) if above_what_must_stay else 0
    budget = floor + int((total(messages) - floor) * budget_share)
    counter = RecordingCounter()

    fitted = fit_messages_to_budget(messages, budget_tokens=budget, count_tokens=counter)

    assert messages == before  # neither the list nor its dicts changed
    assert max(counter.asked.values()) == 1
    indexes = source_indexes(fitted, messages)
    # A note replaces an output only where it is the shorter of the two.
    assert all(tokens_of(m) < tokens_of(messages[i]) for m, i in zip(fitted, indexes, strict=True) if m is not messages[i])
    # The system message and the current turn are all there, and in place.
    if has_system:
        assert fitted[0] is messages[0]
    assert indexes[len(indexes) - (len(messages) - current):] == list(range(current, len(messages)))
    # Older turns go oldest first: what is kept of them is one unbroken run ending at the current turn.
    older = indexes[int(has_system): len(indexes) - (len(messages) - current)]
    assert older == list(range(current - len(older), current))
    # No tool result without the call it answers, no call without its result.
    called: set[str] = set()
    answered: set[str] = set()
    for message in fitted:
        if message["role"] == "assistant":
            called |= {call["id"] for call in message.get("tool_calls") or []}
        if message["role"] == "tool":
            assert message["tool_call_id"] in called
            answered.add(message["tool_call_id"])
    assert called == answered
    # The last step's results stay whole: the model is answering them now.
    last_assistant = max((i for i in range(current, len(messages)) if messages[i]["role"] == "assistant"), default=None)
    if last_assistant is not None:
        tail = len(messages) - last_assistant
        assert all(a is b for a, b in zip(fitted[-tail:], messages[-tail:], strict=True))
    # Fitting what was fitted changes nothing: a note is never compacted again.
    assert fit_messages_to_budget(fitted, budget_tokens=budget, count_tokens=RecordingCounter()) == fitted
    # It fits whenever the system message and the current turn alone fit.
    if total(messages) <= budget:
        assert fitted == messages
    elif total(messages[:int(has_system)] + messages[current:]) <= budget:
        assert total(fitted) <= budget
    # Turns are dropped only once every older tool output that compacting would shrink is compacted.
    if len(older) < current - int(has_system):
        for position, index in enumerate(older, start=int(has_system)):
            original = messages[index]
            if original["role"] == "tool" and not is_compacted(fitted[position]):
                assert len(original["content"]) <= COMPACTED_PREVIEW_CHARS or (
                    tokens_of(compacted_copy(original)) >= tokens_of(original))


# -- litellm's counter, offline ------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach the network fails the test."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args[:2]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("model", ["openai/scripted", "local/demo", "gpt-4o", "groq/llama-3.1-8b-instant"])
def test_litellm_counts_offline_and_the_fitting_uses_it(no_network, monkeypatch, model):
    from chatrooms.llm import get_litellm

    litellm = get_litellm()
    # For Llama models litellm would fetch a tokenizer from Hugging Face; the counter must not ask it to.
    monkeypatch.setattr(litellm.utils.tokenizer_dispatch, "from_pretrained",
                        lambda *a, **k: pytest.fail("a tokenizer download was attempted"))
    count_tokens = litellm_token_counter(model)
    assert litellm_token_counter(model) is count_tokens

    started = time.monotonic()
    messages = conversation()
    sizes = [count_tokens([m]) for m in messages]
    assert all(size > 0 for size in sizes)
    assert sizes[3] > 100  # 2000 characters of JSON are hundreds of tokens
    fitted = fit_messages_to_budget(messages, budget_tokens=sum(sizes) - 200, count_tokens=count_tokens)
    assert is_compacted(fitted[3]) and len(fitted) == len(messages)
    assert sum(count_tokens([m]) for m in fitted) <= sum(sizes) - 200
    assert time.monotonic() - started < 5
