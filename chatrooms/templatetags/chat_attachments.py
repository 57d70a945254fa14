"""Template helpers for text attachments: a message's file chips, and what the attach button accepts."""
from __future__ import annotations

from typing import Any

from django import template

from chatrooms.attachments import DOWNLOAD_URL, accepted_extensions
from chatrooms.models import Message

register = template.Library()


@register.filter
def file_chips(message: Message) -> list[dict[str, Any]]:
    """The message's file parts as chips. Only our own download URLs become links: parts may come
    from an imported export, and a `javascript:` URL must never reach an href."""
    chips = []
    for part in message.parts or []:
        if isinstance(part, dict) and part.get("type") == "file":
            url = part.get("url")
            chips.append({
                "filename": str(part.get("filename") or "file"),
                "media_type": str(part.get("mediaType") or ""),
                "url": url if isinstance(url, str) and DOWNLOAD_URL.match(url) else None,
            })
    return chips


@register.simple_tag
def attachment_accept() -> str:
    """The file input's `accept`: the extensions the server takes (chatrooms.attachments)."""
    return ",".join(accepted_extensions())
