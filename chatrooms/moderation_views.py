"""The live moderation page for staff (/moderation/): streams running now and the newest messages
across all rooms, refreshed by htmx polling, with hide, unhide and abort buttons that call the same
audited services as the admin's actions. Anyone who is not staff is sent to the admin's login page."""
from __future__ import annotations

import uuid

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from . import selectors, services
from .services import ActionRefused

PAGE = "chatrooms/moderation.html"
# How often the page's two tables re-read themselves (htmx `every Ns`).
REFRESH_SECONDS = 3


def _streams_context() -> dict[str, object]:
    return {"streams": selectors.live_streams_for_moderation(), "refresh_seconds": REFRESH_SECONDS}


def _messages_context() -> dict[str, object]:
    return {"recent_messages": selectors.recent_messages_for_moderation(), "refresh_seconds": REFRESH_SECONDS}


@staff_member_required
@require_GET
def moderation(request: HttpRequest) -> HttpResponse:
    return render(request, PAGE, {**_streams_context(), **_messages_context()})


@staff_member_required
@require_GET
def live_streams(request: HttpRequest) -> HttpResponse:
    return render(request, f"{PAGE}#streams", _streams_context())


@staff_member_required
@require_GET
def recent_messages(request: HttpRequest) -> HttpResponse:
    return render(request, f"{PAGE}#messages", _messages_context())


def _acted(request: HttpRequest, action, partial: str, context) -> HttpResponse:  # noqa: ANN001
    """Run a service; htmx gets the table it changed, re-read, and a browser without JavaScript the page."""
    try:
        action()
    except ActionRefused as refused:
        return HttpResponse(refused.message, status=403 if refused.code == "forbidden" else 400,
                            content_type="text/plain; charset=utf-8")
    if request.htmx:
        return render(request, f"{PAGE}#{partial}", context())
    return redirect("moderation:page")


@staff_member_required
@require_POST
def message_hide(request: HttpRequest, message_id: int) -> HttpResponse:
    return _acted(request, lambda: services.message_hide(staff=request.user, message_ids=[message_id]),
                  "messages", _messages_context)


@staff_member_required
@require_POST
def message_unhide(request: HttpRequest, message_id: int) -> HttpResponse:
    return _acted(request, lambda: services.message_unhide(staff=request.user, message_ids=[message_id]),
                  "messages", _messages_context)


@staff_member_required
@require_POST
def stream_abort(request: HttpRequest, stream_id: uuid.UUID) -> HttpResponse:
    return _acted(request, lambda: services.stream_abort_by_staff(staff=request.user, stream_id=stream_id),
                  "streams", _streams_context)
