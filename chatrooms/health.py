"""/healthz: is this worker able to serve? It checks the database and the channel layer, quickly."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import events

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 3


def _database_answers() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _channel_layer_answers() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel("healthz.")
    await layer.send(channel, {"type": "healthz.ping"})
    message = await layer.receive(channel)
    await events.channel_release(channel)  # else each check left a Redis subscription behind
    if message.get("type") != "healthz.ping":
        raise RuntimeError("the channel layer returned another message")


async def _timed(check) -> str:  # noqa: ANN001
    started = time.monotonic()
    try:
        await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT_SECONDS)
    except Exception as error:  # the answer says what failed; the log says why
        logger.warning("health check %s failed", getattr(check, "__name__", check), exc_info=True)
        return f"failed: {type(error).__name__}"
    return f"ok ({(time.monotonic() - started) * 1000:.0f} ms)"


@never_cache
@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database and the channel layer both answer within a few seconds, else 503.
    Anonymous on purpose (for load balancers); it reveals nothing but timings."""
    database, layer = await asyncio.gather(
        _timed(database_sync_to_async(_database_answers, thread_sensitive=False)), _timed(_channel_layer_answers))
    healthy = database.startswith("ok") and layer.startswith("ok")
    return JsonResponse({"status": "ok" if healthy else "failing", "database": database, "channelLayer": layer},
                        status=200 if healthy else 503)


def _from_this_machine(request: HttpRequest) -> bool:
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:  # no address, or a Unix socket's path
        return False


class LocalHealthCheckMiddleware:
    """Answers `GET /healthz` from this machine (a loopback client address) before any other middleware:
    a plain `curl http://127.0.0.1:8001/healthz` gets its 200 whatever its Host header (ALLOWED_HOSTS)
    and scheme (DJANGO_SSL_REDIRECT). Only that one path, and only from loopback; everything else,
    /healthz from elsewhere included, goes through the usual checks. Behind nginx with daphne's
    --proxy-headers the client address is the one nginx forwards, so outside clients are not exempt."""

    def __init__(self, get_response) -> None:  # noqa: ANN001
        self.get_response = get_response

    def __call__(self, request: HttpRequest):  # noqa: ANN204
        if request.path_info == "/healthz" and _from_this_machine(request):
            return async_to_sync(healthz)(request)
        return self.get_response(request)
