"""The WebSocket's Origin check: a socket opens only from the site's own origin (scheme, host and port) or a trusted one."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}
# An origin as compared: scheme, host name (lower case, IPv6 without brackets) and port (defaults filled in).
Origin = tuple[str, str, int]


def parse_origin(value: str) -> Origin | None:
    """`scheme://host[:port]` as an Origin; None for anything else (`null`, a path, a user, a bad port)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if (scheme not in DEFAULT_PORTS or not parts.hostname or parts.username is not None or parts.password is not None
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        return None
    return scheme, parts.hostname.lower(), port if port is not None else DEFAULT_PORTS[scheme]


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    """The header's one value; None when it is missing, repeated or not text."""
    values = [value for header, value in scope.get("headers", []) if header.lower() == name]
    if len(values) != 1:
        return None
    try:
        return values[0].decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None


def _served_over_https(scope: dict[str, Any]) -> bool:
    if scope.get("scheme") in ("wss", "https"):
        return True
    # Behind a proxy that terminates TLS, the same header as Django's SECURE_PROXY_SSL_HEADER says so.
    proxy_header = settings.SECURE_PROXY_SSL_HEADER
    if proxy_header:
        name, expected = proxy_header
        wanted = name.removeprefix("HTTP_").lower().replace("_", "-").encode()
        return (_header(scope, wanted) or "").split(",")[0].strip() == expected
    return False


def own_origin(scope: dict[str, Any]) -> Origin | None:
    """The site's origin as this request sees it: its Host header (one of ALLOWED_HOSTS) and its scheme
    (ws -> http, wss -> https). None when the Host is missing or not allowed: then no origin is "own"."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    return parse_origin(f"{'https' if _served_over_https(scope) else 'http'}://{host}")


def trusted(origin: Origin, pattern: str) -> bool:
    """One of CSRF_TRUSTED_ORIGINS, as Django reads them: `https://chat.example.com` exactly, or
    `https://*.example.com` for that domain's subdomains (same scheme and port)."""
    wildcard = "://*." in pattern
    allowed = parse_origin(pattern.replace("://*.", "://", 1) if wildcard else pattern)
    if allowed is None:
        return False
    scheme, host, port = origin
    if (scheme, port) != (allowed[0], allowed[2]):
        return False
    return host.endswith("." + allowed[1]) if wildcard else host == allowed[1]


def origin_allowed(scope: dict[str, Any]) -> bool:
    """A socket's Origin must be the site's own (scheme, host and port, the host one of ALLOWED_HOSTS)
    or one of CSRF_TRUSTED_ORIGINS. A missing Origin is refused: browsers always send one, and scripts
    are asked to (docs/protocol.md)."""
    header = _header(scope, b"origin")
    origin = parse_origin(header) if header else None
    own = own_origin(scope)
    if origin is None or own is None:
        return False  # no usable Origin, or a Host that Django would refuse for any request to this site
    return origin == own or any(trusted(origin, pattern) for pattern in settings.CSRF_TRUSTED_ORIGINS)


class SameOriginValidator:
    """ASGI middleware for the WebSocket: passes a socket whose Origin is allowed (origin_allowed) to the
    application; any other is refused before it is accepted (the handshake answers HTTP 403), as
    Channels' AllowedHostsOriginValidator did."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator guards WebSocket connections only")
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
