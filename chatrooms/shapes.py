"""The shapes of a room, a message and a user's feedback as every part sends them: the socket's frames,
the JSON API, exports, broadcasts after a change."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from .catalog import model_for_room
from .models import Message, MessageFeedback, Room

# MessageFeedback.rating (1, -1) as the protocol names it.
FEEDBACK_RATING_NAMES = {MessageFeedback.Rating.UP: "up", MessageFeedback.Rating.DOWN: "down"}


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def feedback_to_dict(rating: int | None, comment: str | None) -> dict[str, str] | None:
    """A user's own feedback on a message as the protocol has it: `{rating: "up"|"down", comment}`, or None."""
    if rating is None:
        return None
    return {"rating": FEEDBACK_RATING_NAMES.get(rating, "up"), "comment": comment or ""}


def message_to_dict(message: Message) -> dict[str, Any]:
    return {
        "id": str(message.pk),
        "roomId": str(message.room_id),
        "role": message.role,
        "content": message.content,
        "parts": message.parts,
        "status": message.status,
        "createdAt": iso(message.created_at),
        "author": message.author.username if message.role == Message.Role.USER and message.author else None,
    }


def room_to_dict(room: Room) -> dict[str, Any]:
    """A room annotated by the selectors with `message_count`, `is_streaming` and, for the user the dict
    is for, `pinned_by_viewer` and `archived_by_viewer` (a room read without a viewer is neither)."""
    return {
        "id": str(room.pk),
        "name": room.name,
        "model": model_for_room(room.model),
        "systemPrompt": room.system_prompt,
        "messageCount": room.message_count,
        "createdAt": iso(room.created_at),
        "lastActiveAt": iso(room.last_active_at),
        "streaming": room.is_streaming,
        "owner": room.owner.username,
        "members": sorted(member.username for member in room.members.all()),
        "pinned": getattr(room, "pinned_by_viewer", False),
        "archived": getattr(room, "archived_by_viewer", False),
        "locked": room.locked_at is not None,  # by staff: read-only for everyone
    }
