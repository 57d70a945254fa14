"""Per-user limits: chat frames a minute, rooms an hour and open sockets, counted in Django's cache (Redis
when REDIS_URL is set, so they hold across workers), and live answers at once, counted in the database.

The frame and room limits use fixed windows: a counter per user and window (the current minute or
hour since the epoch), made with `cache.add` and raised with `cache.incr`, both atomic in Redis and
in the in-memory cache. Every attempt counts, refused ones too; the count starts again at the next
window, which the refusal names. The socket counter has no window: it goes up when a socket is
accepted and down when it closes, and expires SOCKET_COUNT_TTL_SECONDS after it was last touched by an
accepted socket or a live one's re-check, so that sockets of a worker that died without closing them
are forgotten in the end; a refused attempt never touches it (a tab retrying would keep a lockout forever).
A limit of 0 turns that limit off.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache

from .selectors import live_answer_count_for_user

# The frames that start an answer, counted against RATE_CHAT_PER_MINUTE.
CHAT_FRAME_TYPES = frozenset({"chat.send", "chat.regenerate", "chat.edit"})
# A socket counter untouched this long is dropped: the safety net for sockets whose worker was killed.
# Every accepted socket and every session re-check of an open one touches it.
SOCKET_COUNT_TTL_SECONDS = 3600
# The close code of a socket refused because its user has SOCKETS_PER_USER open already.
TOO_MANY_SOCKETS_CLOSE_CODE = 4429


class LimitReached(Exception):
    """A limit of the user's was reached; nothing was done. `retry_after`: seconds until it may
    succeed, when that is known (a window's end), else None."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class WindowedLimit:
    name: str
    setting: str
    window_seconds: int
    what: str  # "messages", as in "at most 30 messages a minute"
    per: str  # "a minute"

    @property
    def limit(self) -> int:
        return getattr(settings, self.setting)


CHAT_FRAMES = WindowedLimit("chat", "RATE_CHAT_PER_MINUTE", 60, "messages", "a minute")
ROOMS_CREATED = WindowedLimit("rooms", "ROOMS_PER_HOUR", 3600, "new rooms", "an hour")


def count_attempt(limit: WindowedLimit, *, user_id: int, now: float | None = None) -> None:
    """Count one attempt in the current window; LimitReached if it is one too many."""
    allowed = limit.limit
    if allowed <= 0:
        return
    now = time.time() if now is None else now
    window = int(now // limit.window_seconds)
    key = f"limits:{limit.name}:{user_id}:{window}"
    # The counter outlives its window, so that it never expires between the add and the incr.
    cache.add(key, 0, timeout=2 * limit.window_seconds)
    try:
        count = cache.incr(key)
    except ValueError:  # evicted in between (a full cache): start it again
        cache.add(key, 0, timeout=2 * limit.window_seconds)
        count = cache.incr(key)
    if count > allowed:
        retry_after = max(1, math.ceil((window + 1) * limit.window_seconds - now))
        raise LimitReached(
            f"Too many {limit.what}: at most {allowed} {limit.per}. Try again in {_duration(retry_after)}.",
            retry_after,
        )


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    return f"{math.ceil(seconds / 60)} min"


def count_frame(*, user_id: int, kind: str) -> None:
    """The limit of a client frame, if it has one: chat frames a minute, rooms an hour."""
    if kind in CHAT_FRAME_TYPES:
        count_attempt(CHAT_FRAMES, user_id=user_id)
    elif kind == "room.create":
        count_attempt(ROOMS_CREATED, user_id=user_id)


# Cache calls can wait on the network (Redis): off the event loop, and off the database's thread.
acount_frame = sync_to_async(count_frame, thread_sensitive=False)


# -- live answers --------------------------------------------------------------------------------


def check_live_answers(*, user: AbstractBaseUser) -> None:
    """Inside the transaction that starts an answer: LimitReached if the user has STREAMS_PER_USER
    live answers already, in any rooms. The user's row is locked first, so that two answers started
    at once by one user are counted one after the other."""
    allowed = settings.STREAMS_PER_USER
    if allowed <= 0:
        return
    list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk"))
    if live_answer_count_for_user(user_id=user.pk) >= allowed:
        raise LimitReached(
            f"You have {allowed} answers streaming already; wait for one to finish (or stop one) first.")


# -- sockets -------------------------------------------------------------------------------------


def _socket_key(user_id: int) -> str:
    return f"limits:sockets:{user_id}"


def socket_open(*, user_id: int) -> bool:
    """Count a socket of this user about to be accepted: True if counted (release it with
    socket_closed), False if the limit is off (nothing counted). LimitReached, and nothing counted,
    if the user has SOCKETS_PER_USER open already."""
    allowed = settings.SOCKETS_PER_USER
    if allowed <= 0:
        return False
    key = _socket_key(user_id)
    cache.add(key, 0, timeout=SOCKET_COUNT_TTL_SECONDS)
    try:
        count = cache.incr(key)
    except ValueError:
        cache.add(key, 0, timeout=SOCKET_COUNT_TTL_SECONDS)
        count = cache.incr(key)
    if count > allowed:
        _release(key)
        raise LimitReached(f"At most {allowed} open connections per user; close one first.")
    cache.touch(key, SOCKET_COUNT_TTL_SECONDS)
    return True


def socket_touch(*, user_id: int) -> None:
    """An open socket is still there: keep its user's counter from expiring."""
    if settings.SOCKETS_PER_USER > 0:
        cache.touch(_socket_key(user_id), SOCKET_COUNT_TTL_SECONDS)


def socket_closed(*, user_id: int) -> None:
    """Release a socket that socket_open counted."""
    _release(_socket_key(user_id))


def _release(key: str) -> None:
    try:
        count = cache.decr(key)
    except ValueError:
        return  # expired (the safety net): nothing left to release
    if count < 0:  # the counter had expired and restarted while this socket was open
        cache.incr(key, -count)


asocket_open = sync_to_async(socket_open, thread_sensitive=False)
asocket_touch = sync_to_async(socket_touch, thread_sensitive=False)
asocket_closed = sync_to_async(socket_closed, thread_sensitive=False)
