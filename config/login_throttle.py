"""Login throttling with django-axes: the backend that refuses locked-out logins, what a success clears,
the lockout's length, and its 429 page."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.handlers.database import AxesDatabaseHandler
from axes.models import AccessAttempt
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string


class LoginThrottleBackend(AxesStandaloneBackend):
    """Axes's check, first among AUTHENTICATION_BACKENDS, for every login that comes with its request.

    Every login a person or a script can reach over HTTP passes its request (Django's LoginView and
    the admin's do; so must any view of ours that calls `authenticate`). A call without one is not a
    login over the network: Django's test client (`Client.login`) and code run by an operator. Axes
    refuses those outright (AxesBackendRequestParameterRequired); here they go to the next backend
    unthrottled, since nothing outside can make them."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None,
                     password: str | None = None, **kwargs: Any) -> None:
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


class OwnFailuresHandler(AxesDatabaseHandler):
    """Axes's database handler, except that a successful login clears only the failures of the account
    that logged in, from the address it logged in from. Axes's own reset deletes every row matching
    any lockout parameter, so that a success from an address wiped its failures against every other
    account: logging in to (or signing up for) one's own account between guesses let anyone guess
    another's password without limit."""

    def reset_user_attempts(self, request: HttpRequest, credentials: dict | None = None) -> int:
        username = (credentials or {}).get(settings.AXES_USERNAME_FORM_FIELD)
        if not username:
            return 0
        count, _ = AccessAttempt.objects.filter(
            username=username, ip_address=getattr(request, "axes_ip_address", None)).delete()
        return count


def lockout_duration(request: HttpRequest | None = None) -> timedelta:
    """AXES_COOLOFF_TIME: LOGIN_LOCKOUT_SECONDS, read at each attempt (so a test can change it)."""
    return timedelta(seconds=settings.LOGIN_LOCKOUT_SECONDS)


def lockout_response(request: HttpRequest, original_response: HttpResponse | None = None,
                     credentials: dict | None = None) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: 429 with a page that says why and when to try again (also in Retry-After).

    The lockout ends LOGIN_LOCKOUT_SECONDS after the last counted failure, so at most that long from now."""
    seconds = settings.LOGIN_LOCKOUT_SECONDS
    minutes = -(-seconds // 60)
    context = {
        "wait": f"{minutes} minute{'s' if minutes != 1 else ''}" if seconds >= 60 else
                f"{seconds} second{'s' if seconds != 1 else ''}",
        "failure_limit": settings.LOGIN_FAILURE_LIMIT,
        "login_url": request.path,
    }
    response = HttpResponse(render_to_string("registration/locked_out.html", context, request=request), status=429)
    response["Retry-After"] = str(seconds)
    return response
