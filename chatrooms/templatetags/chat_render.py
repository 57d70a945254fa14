"""Template filters that show stored messages: Markdown to safe HTML, parts to displayable pieces."""
from __future__ import annotations

import json
from typing import Any

from django import template
from django.utils.safestring import SafeString, mark_safe

from chatrooms.models import Message
from chatrooms.rendering import markdown_to_html

register = template.Library()


@register.filter
def markdown(text: str) -> SafeString:
    return mark_safe(markdown_to_html(text or ""))  # noqa: S308  (nh3 has sanitised it)


@register.filter
def display_parts(message: Message) -> list[dict[str, Any]]:
    """Text and reasoning as Markdown, tool calls as cards; step markers and data parts left out."""
    pieces: list[dict[str, Any]] = []
    for part in message.parts or []:
        kind = str(part.get("type", ""))
        if kind in ("text", "reasoning") and part.get("text"):
            pieces.append({"kind": kind, "text": part["text"]})
        elif kind.startswith("tool-"):
            pieces.append({
                "kind": "tool",
                "name": kind[len("tool-"):],
                "state": part.get("state", ""),
                "input": json.dumps(part.get("input"), indent=2, ensure_ascii=False),
                "output": json.dumps(part.get("output"), indent=2, ensure_ascii=False) if "output" in part else "",
                "error": part.get("errorText", ""),
            })
    if not pieces and message.content:
        pieces.append({"kind": "text", "text": message.content})
    return pieces
