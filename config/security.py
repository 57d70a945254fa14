"""Deployment security for settings.py: where the secret key comes from, and the proxy's HTTPS header."""
from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import TextIO

from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
    _check_secret_key,
)
from django.core.exceptions import ImproperlyConfigured

# Host names only this machine can reach the server by. A server whose DJANGO_ALLOWED_HOSTS are all
# among them (the default) answers nobody else: a laptop, the test suite.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
LOCAL_SECRET_KEY_FILE = "secret_key"


def served_locally(allowed_hosts: list[str]) -> bool:
    return all(host in LOOPBACK_HOSTS for host in allowed_hosts)


def local_secret_key(var_dir: Path) -> str:
    """This machine's own random key, made once and kept in `var_dir` (readable by its owner only), so
    that sessions survive restarts and every process of one checkout (tests and the servers they start)
    agrees. Two processes starting at once agree too: the file appears whole or not at all."""
    path = var_dir / LOCAL_SECRET_KEY_FILE
    if not path.exists():
        draft = var_dir / f".{LOCAL_SECRET_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as draft_file:
            draft_file.write(secrets.token_urlsafe(50))
        try:
            os.link(draft, path)  # fails if another process was first: its key wins
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    key = path.read_text().strip()
    if len(key) < 50:
        raise ImproperlyConfigured(f"{path} holds no usable key; delete it and start again.")
    return key


def secret_key_from_environment(*, value: str, debug: bool, allowed_hosts: list[str], var_dir: Path) -> str:
    """DJANGO_SECRET_KEY; without it, a machine-local key for a laptop (DEBUG on, or only loopback
    host names), and a startup error for anything else: a server others can reach must have its own.
    A server others can reach (any host name beyond loopback, DEBUG or not) also refuses a key that
    Django's own deploy check (security.W009) calls weak: short, few distinct characters, or Django's
    `django-insecure-` placeholder."""
    if value:
        if not served_locally(allowed_hosts) and not _check_secret_key(value):
            raise ImproperlyConfigured(
                f"DJANGO_SECRET_KEY is too weak for a server others can reach ({', '.join(allowed_hosts)}, "
                f"DJANGO_ALLOWED_HOSTS): it needs at least {SECRET_KEY_MIN_LENGTH} characters, at least "
                f"{SECRET_KEY_MIN_UNIQUE_CHARACTERS} of them different, and must not start with "
                f"{SECRET_KEY_INSECURE_PREFIX!r}. Make one with `python -c \"from django.core.management.utils "
                f"import get_random_secret_key; print(get_random_secret_key())\"`.")
        return value
    if debug or served_locally(allowed_hosts):
        return local_secret_key(var_dir)
    raise ImproperlyConfigured(
        "Set DJANGO_SECRET_KEY to a long random value (for example the output of "
        "`python3 -c 'import secrets; print(secrets.token_urlsafe(50))'`): this server answers "
        f"{', '.join(allowed_hosts)} (DJANGO_ALLOWED_HOSTS), so it may not use a key made on this machine."
    )


def warn_about_allowed_hosts(allowed_hosts: list[str], stream: TextIO | None = None) -> None:
    """A loud line on stderr at every start while DJANGO_ALLOWED_HOSTS holds `*`: any Host header is
    then answered (password-reset links and absolute URLs can be made to point elsewhere)."""
    if "*" in allowed_hosts:
        (stream or sys.stderr).write(
            "WARNING: DJANGO_ALLOWED_HOSTS contains '*': this server answers any Host header. "
            "List the host names it is reached by instead (for example DJANGO_ALLOWED_HOSTS=chat.example.com).\n")


def proxy_ssl_header(value: str) -> tuple[str, str] | None:
    """DJANGO_SECURE_PROXY_SSL_HEADER, `Header-Name: value` (e.g. `X-Forwarded-Proto: https`), as
    Django's SECURE_PROXY_SSL_HEADER; None when unset."""
    if not value.strip():
        return None
    name, separator, expected = value.partition(":")
    name, expected = name.strip(), expected.strip()
    if not separator or not name or not expected or any(c.isspace() for c in name):
        raise ImproperlyConfigured(
            f"DJANGO_SECURE_PROXY_SSL_HEADER must look like `X-Forwarded-Proto: https`, not {value!r}.")
    return "HTTP_" + name.upper().replace("-", "_"), expected


def refuse_sqlite_for_reachable_server(*, engine: str, allowed_hosts: list[str], allowed: bool) -> None:
    """Stop startup on SQLite when DJANGO_ALLOWED_HOSTS names a host beyond loopback, unless allowed."""
    if engine == "django.db.backends.sqlite3" and not served_locally(allowed_hosts) and not allowed:
        raise ImproperlyConfigured(
            f"This server answers {', '.join(allowed_hosts)} (DJANGO_ALLOWED_HOSTS) but has no DATABASE_URL, or "
            "a SQLite one: was the environment loaded? Run management commands with deploy/manage, which "
            "loads /etc/chatrooms.env. Set DATABASE_URL=postgres://..., or CHATROOMS_ALLOW_SQLITE=true to "
            "serve from SQLite on purpose (one worker only).")


LOCKOUT_PARAMETERS = ("username", "ip_address")


def login_lockout_parameters(value: str) -> list[str | list[str]]:
    """LOGIN_LOCKOUT_BY as django-axes's AXES_LOCKOUT_PARAMETERS: comma-separated entries, each
    `username`, `ip_address`, or both joined by `+` (counted together: that account from that address).
    Each entry is counted on its own; any one at the limit refuses the login."""
    entries: list[str | list[str]] = []
    for entry in value.split(","):
        names = [name.strip() for name in entry.split("+")]
        if not entry.strip() or any(name not in LOCKOUT_PARAMETERS for name in names) or len(set(names)) != len(names):
            raise ImproperlyConfigured(
                f"LOGIN_LOCKOUT_BY must be comma-separated entries of {' or '.join(LOCKOUT_PARAMETERS)}, or both "
                f"joined by + (for example `username,ip_address`), not {value!r}.")
        entries.append(names[0] if len(names) == 1 else names)
    return entries


def positive_int(name: str, value: str, default: int) -> int:
    """An environment variable that must be a whole number of at least 1 (its default when unset)."""
    if not value.strip():
        return default
    try:
        number = int(value.strip())
    except ValueError:
        number = 0
    if number < 1:
        raise ImproperlyConfigured(f"{name} must be a whole number of at least 1, not {value!r}.")
    return number
