"""Parses and checks the MCP_SERVERS setting, so that a bad entry stops the process at startup."""
from __future__ import annotations

import json
import re
from typing import Any

from django.core.exceptions import ImproperlyConfigured

SERVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
STDIO_KEYS = {"name", "command", "args", "env"}
HTTP_KEYS = {"name", "url", "headers"}


def parse_mcp_servers(text: str) -> list[dict[str, Any]]:
    """The servers of the MCP_SERVERS environment variable (a JSON list); unset or blank: none."""
    if not text.strip():
        return []
    try:
        entries = json.loads(text)
    except ValueError as error:
        raise ImproperlyConfigured(f"MCP_SERVERS is not valid JSON: {error}") from None
    return validate_mcp_servers(entries)


def validate_mcp_servers(entries: Any) -> list[dict[str, Any]]:
    """Checked copies of the server entries, each with all its optional keys filled in.

    A stdio server is {"name", "command", "args"?, "env"?}; a streamable HTTP one is
    {"name", "url", "headers"?}. Raises ImproperlyConfigured naming the first bad entry.
    """
    if not isinstance(entries, list):
        raise ImproperlyConfigured("MCP_SERVERS must be a JSON list of server objects")
    servers: list[dict[str, Any]] = []
    seen: set[str] = set()
    for position, entry in enumerate(entries):
        server = _validate_entry(position, entry)
        if server["name"] in seen:
            raise ImproperlyConfigured(f"MCP_SERVERS[{position}]: the name {server['name']!r} is used twice")
        seen.add(server["name"])
        servers.append(server)
    return servers


def parse_seconds(variable: str, text: str, default: float) -> float:
    """A non-negative number of seconds from an environment variable; unset or blank: the default."""
    if not text.strip():
        return default
    try:
        seconds = float(text)
    except ValueError:
        raise ImproperlyConfigured(f"{variable} must be a number of seconds, not {text!r}") from None
    if not seconds >= 0:  # also refuses nan
        raise ImproperlyConfigured(f"{variable} must be a number of seconds, not {text!r}")
    return seconds


def _validate_entry(position: int, entry: Any) -> dict[str, Any]:
    where = f"MCP_SERVERS[{position}]"
    if not isinstance(entry, dict):
        raise ImproperlyConfigured(f"{where} must be an object with a name and a command or a url")
    name = entry.get("name")
    if name is None:
        raise ImproperlyConfigured(f"{where} has no \"name\"")
    if not isinstance(name, str) or not SERVER_NAME.fullmatch(name):
        raise ImproperlyConfigured(f"{where}: the name {name!r} must be 1 to 32 characters of A-Z, a-z, 0-9, _ and -")
    where = f"{where} ({name!r})"
    if ("command" in entry) == ("url" in entry):
        raise ImproperlyConfigured(f"{where} must have either a \"command\" (stdio) or a \"url\" (HTTP), not both")
    allowed = STDIO_KEYS if "command" in entry else HTTP_KEYS
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ImproperlyConfigured(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    if "command" in entry:
        command = entry["command"]
        if not isinstance(command, str) or not command.strip():
            raise ImproperlyConfigured(f"{where}: \"command\" must be a non-empty string")
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
            raise ImproperlyConfigured(f"{where}: \"args\" must be a list of strings")
        return {"name": name, "command": command, "args": list(args), "env": _string_map(where, entry, "env")}
    url = entry["url"]
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ImproperlyConfigured(f"{where}: \"url\" must be an http:// or https:// URL")
    return {"name": name, "url": url, "headers": _string_map(where, entry, "headers")}


def _string_map(where: str, entry: dict[str, Any], key: str) -> dict[str, str]:
    value = entry.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ImproperlyConfigured(f"{where}: \"{key}\" must be an object of strings")
    return dict(value)
