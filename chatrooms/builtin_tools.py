"""The built-in tools every room has: the time, a die, renaming the room (with a person's approval),
and the browser's local time (a client tool). Registered by chatrooms.tools.load_tool_modules."""
from __future__ import annotations

import random
from datetime import datetime, timezone
from typing import Annotated

from django.contrib.auth import get_user_model

from .services import ActionRefused, room_rename
from .tools import ToolContext, ToolInputError, client_tool, tool


@tool("Get the current date and time in UTC, as ISO 8601.")
def get_current_time() -> dict[str, str]:
    now = datetime.now(timezone.utc)
    return {"utc": now.isoformat(timespec="seconds").replace("+00:00", "Z"), "weekday": now.strftime("%A")}


@tool("Roll one fair die with the given number of sides (2 to 1000) and return the result.")
def roll_dice(sides: int = 6) -> dict[str, int]:
    if not 2 <= sides <= 1000:
        raise ToolInputError("sides must be between 2 and 1000")
    return {"sides": sides, "result": random.randint(1, sides)}


@tool("Rename the current chat room. A person in the room must approve it first.", needs_approval=True)
def rename_room(name: Annotated[str, "The new name, 1 to 100 characters"], context: ToolContext) -> dict[str, str]:
    cleaned = name.strip()
    if not 1 <= len(cleaned) <= 100:
        raise ToolInputError("the name must be 1 to 100 characters")
    approver = get_user_model().objects.filter(pk=context.approver_id).first()
    if approver is None:
        raise ToolInputError("nobody approved the rename")
    try:
        room = room_rename(user=approver, room_id=context.room_id, name=cleaned)
    except ActionRefused as refusal:
        raise ToolInputError(refusal.message) from None
    return {"renamed": True, "name": room.name}


@client_tool("Get the user's local date, time and time zone from their browser.")
def get_local_time() -> None:
    """Answered by the client with {localTime, timeZone, utcOffsetMinutes}."""
