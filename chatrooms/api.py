"""The read-only JSON API: rooms and their messages in the protocol's shapes, by session or personal token."""
from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.paginator import EmptyPage, Paginator
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.utils.http import urlencode

from . import selectors, services
from .shapes import message_to_dict, room_to_dict
from .selectors import RoomNotFound

ROOMS_PAGE_SIZE = 50
MESSAGES_DEFAULT_LIMIT = 50
MESSAGES_MAX_LIMIT = 200


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def api_view(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
    """GET only; the user is the session's or the one whose token is in `Authorization: Bearer …`."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        if request.method not in ("GET", "HEAD"):
            response = _error(405, "method_not_allowed", "This API is read-only: use GET.")
            response["Allow"] = "GET, HEAD"
            return response
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, key = header.partition(" ")
            user = services.api_token_authenticate(key=key.strip()) if scheme.lower() == "bearer" else None
            if user is None:
                return _error(401, "unauthorized", "The API token is not valid (it may have been revoked).")
            request.user = user
        elif not request.user.is_authenticated:
            return _error(401, "unauthorized", "Log in, or send a personal token as `Authorization: Bearer <token>`.")
        try:
            return view(request, *args, **kwargs)
        except RoomNotFound:
            return _error(404, "not_found", "No such room.")

    return wrapper


def _int_param(request: HttpRequest, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:  # "²" is a digit, not a number
        raise ValueError(f"`{name}` must be a whole number from {low} to {high}.")
    return int(raw)


@api_view
def rooms(request: HttpRequest) -> JsonResponse:
    """Every room the user can see, most recently active first, a page at a time."""
    try:
        page_number = _int_param(request, "page", 1, 1, 10**6)
    except ValueError as error:
        return _error(400, "bad_request", str(error))
    paginator = Paginator(selectors.room_list_for_user(user=request.user), ROOMS_PAGE_SIZE)
    try:
        page = paginator.page(page_number)
    except EmptyPage:
        return _error(404, "not_found", f"There is no page {page_number}; there are {paginator.num_pages}.")
    next_url = f"{reverse('api:rooms')}?{urlencode({'page': page_number + 1})}" if page.has_next() else None
    return JsonResponse({"rooms": list(page.object_list), "page": page_number, "pages": paginator.num_pages,
                         "next": next_url})


@api_view
def room(request: HttpRequest, room_id: int) -> JsonResponse:
    return JsonResponse({"room": room_to_dict(selectors.room_get_for_user(user=request.user, room_id=room_id))})


@api_view
def messages(request: HttpRequest, room_id: int) -> JsonResponse:
    """A room's finished messages, oldest first; `before` (a message id) pages back in time."""
    chosen = selectors.room_get_for_user(user=request.user, room_id=room_id)
    try:
        before = _int_param(request, "before", None, 1, 2**63 - 1)
        limit = _int_param(request, "limit", MESSAGES_DEFAULT_LIMIT, 1, MESSAGES_MAX_LIMIT)
    except ValueError as error:
        return _error(400, "bad_request", str(error))
    page = selectors.message_page_for_room(room=chosen, before_id=before, limit=limit)  # type: ignore[arg-type]
    next_url = None
    if page.older_before is not None:
        next_url = f"{reverse('api:messages', args=[chosen.pk])}?{urlencode({'before': page.older_before, 'limit': limit})}"
    return JsonResponse({"roomId": str(chosen.pk), "messages": [message_to_dict(m) for m in page.messages],
                         "hasOlder": page.older_before is not None, "next": next_url})
