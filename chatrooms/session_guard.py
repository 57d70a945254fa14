"""An open socket's login kept honest: its session re-read every SESSION_RECHECK_SECONDS (with its active
room's access, by the socket's timer; and on a frame if the last read is older), and a logout heard at
once (the user_logged_out signal reaches the user's sockets through their group)."""
from __future__ import annotations

import hashlib
import time
from importlib import import_module
from types import SimpleNamespace
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

from . import events, limits, selectors


def session_digest(session_key: str | None) -> str:
    """How a session is named on the channel layer: a hash, never the key itself, which is a login."""
    return hashlib.sha256(session_key.encode()).hexdigest() if session_key else ""


def session_user_id(*, session_key: str | None) -> int | None:
    """The user this session logs in now, exactly as the next HTTP request would find it (a fresh
    read of the session store, then Django's own checks); None if the session expired or was logged
    out, or its user was deactivated or changed their password."""
    if not session_key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key)
    user = get_user(SimpleNamespace(session=store))
    return user.pk if user.is_authenticated else None


def _session_and_room(*, session_key: str | None, user: Any, room_id: str | None) -> tuple[int | None, bool]:
    found = session_user_id(session_key=session_key)
    if found is None or room_id is None:
        return found, True
    try:
        selectors.room_check_access(user=user, room_id=room_id)
    except selectors.RoomNotFound:
        return found, False
    return found, True


class SessionGuard:
    """One socket's view of its session: trusted for SESSION_RECHECK_SECONDS after each check, and
    ended for good once found invalid or logged out."""

    def __init__(self, *, user_id: int, session_key: str | None) -> None:
        self.user_id = user_id
        self.session_key = session_key
        self.digest = session_digest(session_key)
        self.checked_at = time.monotonic()  # the handshake's AuthMiddleware has just checked it
        self.ended = False

    async def holds(self) -> bool:
        if self.ended:
            return False
        now = time.monotonic()
        if now - self.checked_at < settings.SESSION_RECHECK_SECONDS:
            return True
        self.checked_at = now
        found = await database_sync_to_async(session_user_id)(session_key=self.session_key)
        self.ended = found != self.user_id
        if not self.ended:
            await limits.asocket_touch(user_id=self.user_id)  # still open: keep it counted
        return not self.ended

    async def recheck(self, *, user: Any, room_id: str | None) -> tuple[bool, bool]:
        """The socket's timer: read the session again now and, if it holds and the socket is in a room,
        whether the user can still see that room. (session holds, room visible); one call, off the
        shared database thread (a query waiting there must not hold this socket's events up)."""
        if self.ended:
            return False, False
        self.checked_at = time.monotonic()
        found, sees_room = await database_sync_to_async(_session_and_room, thread_sensitive=False)(
            session_key=self.session_key, user=user, room_id=room_id)
        self.ended = found != self.user_id
        if self.ended:
            return False, False
        await limits.asocket_touch(user_id=self.user_id)  # still open: keep it counted
        return True, sees_room

    def heard_logout(self, digest: str) -> bool:
        """A logout of one of this user's sessions: True if it was this socket's (which has ended)."""
        if digest and digest == self.digest:
            self.ended = True
        return self.ended


@receiver(user_logged_out, dispatch_uid="chatrooms.session_guard.logout")
def close_sockets_of_logged_out_session(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Tell the user's sockets which session just logged out; those of that session close with 4401.
    Sent before the session is flushed, so its key is still known here."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if user is None or not session_key:
        return
    events.send_after_commit(events.user_group(user.pk), {"type": "session.ended",
                                                           "session": session_digest(session_key)})
