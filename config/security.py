"""Deployment security for settings.py: where the secret key comes from, and the proxy's HTTPS header."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

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
    host names), and a startup error for anything else: a server others can reach must have its own."""
    if value:
        return value
    if debug or served_locally(allowed_hosts):
        return local_secret_key(var_dir)
    raise ImproperlyConfigured(
        "Set DJANGO_SECRET_KEY to a long random value (for example the output of "
        "`python3 -c 'import secrets; print(secrets.token_urlsafe(50))'`): this server answers "
        f"{', '.join(allowed_hosts)} (DJANGO_ALLOWED_HOSTS), so it may not use a key made on this machine."
    )


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
