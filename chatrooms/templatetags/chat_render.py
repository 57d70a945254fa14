"""Template filters that show stored messages: Markdown to safe HTML, parts to displayable pieces."""
from __future__ import annotations

import json
from typing import Any

from django import template
from django.utils.safestring import SafeString, mark_safe

from chatrooms.models import Message
from chatrooms.rendering import markdown_to_html

register = template.Library()

# What a tool card's summary says of each state; static/chatrooms/chat.js (toolStateLabel) says the
# same of live cards, so that the swap to this rendering at the end of an answer changes nothing.
TOOL_STATE_LABELS = {
    "input-streaming": "Calling…",
    "input-available": "Running…",
    "approval-requested": "Waiting for approval",
    "output-error": "Failed",
    "output-denied": "Denied",
}


@register.filter
def markdown(text: str) -> SafeString:
    return mark_safe(markdown_to_html(text or ""))  # noqa: S308  (nh3 has sanitised it)


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))


def tool_state_label(part: dict[str, Any]) -> str:
    state = part.get("state", "")
    approved = (part.get("approval") or {}).get("approved")
    if state == "approval-responded":
        return "Approved · running…" if approved else "Denied"
    if state == "output-available":
        if part.get("preliminary"):
            return "In progress…"
        return "Approved · done" if approved else "Done"
    return TOOL_STATE_LABELS.get(state, state)


def _tool_piece(part: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "tool",
        "name": str(part.get("type", ""))[len("tool-"):],
        "call_id": part.get("toolCallId", ""),
        "state": part.get("state", ""),
        "label": tool_state_label(part),
        "input": _pretty_json(part.get("input")),
        "has_output": "output" in part,
        "output": _pretty_json(part.get("output")) if "output" in part else "",
        "preliminary": bool(part.get("preliminary")),
        "error": part.get("errorText", ""),
    }


@register.filter
def display_parts(message: Message) -> list[dict[str, Any]]:
    """Text and reasoning as Markdown, tool calls as cards, notices as notes, other data parts as
    collapsed JSON; step markers and the usage part (see `usage_line`) left out."""
    pieces: list[dict[str, Any]] = []
    for part in message.parts or []:
        if not isinstance(part, dict):
            continue
        kind = str(part.get("type", ""))
        if kind in ("text", "reasoning") and part.get("text"):
            pieces.append({"kind": kind, "text": part["text"]})
        elif kind.startswith("tool-"):
            pieces.append(_tool_piece(part))
        elif kind == "data-notice":
            data = part.get("data")
            text = data.get("text") if isinstance(data, dict) else None
            pieces.append({"kind": "notice", "text": text if isinstance(text, str) else _compact_json(data)})
        elif kind.startswith("data-") and kind != "data-usage":
            pieces.append({"kind": "data", "name": kind[len("data-"):], "json": _compact_json(part.get("data"))})
    if message.content and not any(piece["kind"] == "text" for piece in pieces):
        pieces.insert(0, {"kind": "text", "text": message.content})
    return pieces


@register.filter
def usage_line(message: Message) -> dict[str, str] | None:
    """The `data-usage` part as one short line ("openai/x · 20 in · 5 out") and its total, or None."""
    usage = next((part.get("data") for part in message.parts or []
                  if isinstance(part, dict) and part.get("type") == "data-usage"), None)
    if not isinstance(usage, dict):
        return None
    pieces = [str(usage["model"])] if usage.get("model") else []
    pieces += [f"{usage.get('inputTokens', 0)} in", f"{usage.get('outputTokens', 0)} out"]
    return {"text": " · ".join(pieces), "total": f"{usage.get('totalTokens', 0)} tokens in total"}
