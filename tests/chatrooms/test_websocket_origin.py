"""The WebSocket's Origin check (config/websocket_origin.py): scheme, host and port must be the site's own as
the request sees it (its Host, one of ALLOWED_HOSTS; ws -> http, wss -> https) or one of
CSRF_TRUSTED_ORIGINS. Host names alone are not enough: http://127.0.0.1:1 and https://localhost are not
http://localhost:8000. A refused socket is refused at the handshake (HTTP 403) and changes nothing."""
from __future__ import annotations

import pytest
import websockets
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from config.websocket_origin import origin_allowed, parse_origin
from tests.conftest import session_cookie_for
from tests.factories import make_user
from tests.test_end_to_end import log_in

SERVER = "localhost:8000"


def scope(origin: str | None, host: str | None = SERVER, scheme: str = "ws", **headers: str) -> dict:
    pairs = [(b"host", host.encode())] if host is not None else []
    if origin is not None:
        pairs.append((b"origin", origin.encode()))
    pairs += [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    return {"type": "websocket", "scheme": scheme, "headers": pairs}


@pytest.mark.parametrize("origin", [
    "http://127.0.0.1:1",  # an allowed host name on another port
    "https://localhost",  # the right host name over another scheme (and port)
    "https://localhost:8000",  # the right host and port over another scheme
    "http://localhost",  # port 80
    "http://localhost:8001",
    "http://127.0.0.1:8000",  # allowed too, but not the origin this request was made to
    "http://evil.example",
    "http://localhost.evil.example:8000",
    "null",
    "",
    "localhost:8000",
    "ws://localhost:8000",
    "http://localhost:8000/path",
    "http://user@localhost:8000",
    "http://localhost:99999",
    "http://localhost:80:00",
])
def test_foreign_origins_are_refused(origin):
    assert origin_allowed(scope(origin)) is False


@pytest.mark.parametrize(("origin", "host", "scheme"), [
    ("http://localhost:8000", "localhost:8000", "ws"),
    ("http://LOCALHOST:8000", "localhost:8000", "ws"),
    ("http://localhost:80", "localhost", "ws"),  # default ports are the same port
    ("http://localhost", "localhost:80", "ws"),
    ("https://localhost", "localhost", "wss"),
    ("https://localhost:8443", "localhost:8443", "wss"),
    ("http://127.0.0.1:8000", "127.0.0.1:8000", "ws"),
    ("http://[::1]:8000", "[::1]:8000", "ws"),
])
def test_the_sites_own_origin_is_accepted(origin, host, scheme):
    assert origin_allowed(scope(origin, host, scheme)) is True


def test_the_scheme_must_match_the_sockets_own():
    assert origin_allowed(scope("http://localhost", "localhost", "wss")) is False
    assert origin_allowed(scope("https://localhost", "localhost", "ws")) is False


def test_a_missing_or_repeated_origin_or_host_is_refused():
    assert origin_allowed(scope(None)) is False
    assert origin_allowed(scope("http://localhost:8000", host=None)) is False
    repeated = scope("http://localhost:8000")
    repeated["headers"].append((b"origin", b"http://localhost:8000"))
    assert origin_allowed(repeated) is False


def test_a_host_not_in_allowed_hosts_has_no_own_origin(settings):
    """DNS rebinding: a page on evil.example:8000 resolving to this server sends matching Host and Origin."""
    assert origin_allowed(scope("http://evil.example:8000", "evil.example:8000")) is False
    settings.ALLOWED_HOSTS = ["evil.example"]
    assert origin_allowed(scope("http://evil.example:8000", "evil.example:8000")) is True


def test_trusted_origins_are_accepted_exactly(settings):
    settings.ALLOWED_HOSTS = ["chat.example.com", "localhost"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com", "https://*.example.org"]
    # Behind a proxy: the worker sees ws and its own port, the browser's origin is the public one.
    assert origin_allowed(scope("https://chat.example.com", "localhost:8001")) is True
    assert origin_allowed(scope("https://chat.example.com:443", "localhost:8001")) is True
    assert origin_allowed(scope("https://eu.example.org", "localhost:8001")) is True
    assert origin_allowed(scope("https://a.b.example.org", "localhost:8001")) is True
    for origin in ["http://chat.example.com", "https://chat.example.com:8443", "https://evil.chat.example.com",
                   "https://example.org", "https://eu.example.org:8443", "http://eu.example.org",
                   "https://example.org.evil.example"]:
        assert origin_allowed(scope(origin, "localhost:8001")) is False, origin
    # Still not with a Host Django would refuse.
    assert origin_allowed(scope("https://chat.example.com", "evil.example")) is False


def test_the_proxys_https_header_makes_the_own_origin_https(settings):
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert origin_allowed(scope("https://chat.example.com", "chat.example.com", x_forwarded_proto="https")) is True
    assert origin_allowed(scope("http://chat.example.com", "chat.example.com", x_forwarded_proto="https")) is False
    assert origin_allowed(scope("https://chat.example.com", "chat.example.com")) is False
    settings.SECURE_PROXY_SSL_HEADER = None
    assert origin_allowed(scope("https://chat.example.com", "chat.example.com", x_forwarded_proto="https")) is False


def test_parse_origin():
    assert parse_origin("http://localhost:8000") == ("http", "localhost", 8000)
    assert parse_origin("HTTPS://Example.COM") == ("https", "example.com", 443)
    assert parse_origin("http://[::1]") == ("http", "::1", 80)
    for bad in ["null", "", "file://x", "http://", "http://x:port", "http://x/?a", "http://x#f"]:
        assert parse_origin(bad) is None, bad


# -- through the application, as Channels sees a socket ----------------------------------------


async def connect(user, *, origin: str, host: str = SERVER, scheme: str = "ws") -> tuple[bool, WebsocketCommunicator]:
    from config.asgi import application

    headers = [(b"host", host.encode()), (b"origin", origin.encode()),
               (b"cookie", f"sessionid={await session_cookie_for(user)}".encode())]
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    communicator.scope["scheme"] = scheme
    connected, _ = await communicator.connect(timeout=10)
    return connected, communicator


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("origin", "accepted"), [
    ("http://127.0.0.1:1", False),
    ("https://localhost", False),
    ("http://localhost:8000", True),
    ("https://chat.example.com", True),
    ("http://chat.example.com", False),
])
async def test_sockets_by_origin(origin, accepted, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com"]
    user = await database_sync_to_async(make_user)("alice")
    connected, communicator = await connect(user, origin=origin)
    try:
        assert connected is accepted
        if accepted:
            assert (await communicator.receive_json_from(timeout=10))["type"] == "hello"
    finally:
        await communicator.disconnect()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_over_daphne_only_the_exact_origin_opens_a_socket(worker):
    await database_sync_to_async(make_user)("alice", "correct-horse-battery")
    cookie = await database_sync_to_async(log_in)(worker.http_url, "alice", "correct-horse-battery")
    port = worker.http_url.rsplit(":", 1)[1]
    for origin in ["http://127.0.0.1:1", "https://127.0.0.1:" + port, f"http://localhost:{port}"]:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(worker.ws_url, additional_headers={"Cookie": cookie, "Origin": origin})
        assert refused.value.response.status_code == 403, origin
    async with websockets.connect(worker.ws_url, additional_headers={"Cookie": cookie, "Origin": worker.http_url}) as ws:
        assert '"hello"' in await ws.recv()
