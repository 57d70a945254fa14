"""Deployment settings: `check --deploy` is clean with production settings, a reachable server will not
start without its own secret key or with a weak one, `*` in the allowed hosts is warned about at start,
a laptop needs no environment at all, and every response carries the security headers."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.security import local_secret_key, proxy_ssl_header, secret_key_from_environment
from tests.servers import ROOT

PRODUCTION = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "kq3v-9XbT2r_Lw8PzN4mY7uH1cJ6sD0fG5aE-Qx2Rt9Vb3Nm8Kp4Ls7Wd1Zy6Hj0",
    "DJANGO_ALLOWED_HOSTS": "chat.example.com",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
    "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https",
    "DJANGO_SSL_REDIRECT": "true",
    "DJANGO_HSTS_SECONDS": "31536000",
    "DJANGO_HSTS_INCLUDE_SUBDOMAINS": "true",
    "DJANGO_HSTS_PRELOAD": "true",
    # Nothing listens there: no command below connects to the database.
    "DATABASE_URL": "postgres://chatrooms:secret@127.0.0.1:1/chatrooms",
}

SHOW_SETTINGS = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'key': s.SECRET_KEY, 'session_secure': s.SESSION_COOKIE_SECURE, "
    "'csrf_secure': s.CSRF_COOKIE_SECURE, 'hsts': s.SECURE_HSTS_SECONDS, "
    "'proxy': s.SECURE_PROXY_SSL_HEADER, 'redirect': s.SECURE_SSL_REDIRECT}))"
)


def run_django(args: list[str], env: dict[str, str], var_dir: Path) -> subprocess.CompletedProcess[str]:
    """A fresh process with only `env` of the deployment settings (none of this run's DJANGO_* ones)."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("DJANGO_")}
    full_env = {**clean, "DJANGO_SETTINGS_MODULE": "config.settings", "CHATROOMS_VAR_DIR": str(var_dir), **env}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=120)


def shown_settings(env: dict[str, str], var_dir: Path) -> dict:
    done = run_django(["-c", SHOW_SETTINGS], env, var_dir)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    done = run_django(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], PRODUCTION, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout
    assert not (tmp_path / "secret_key").exists()  # the environment's key, not one of this machine's


def test_production_settings_are_secure(tmp_path):
    shown = shown_settings(PRODUCTION, tmp_path)
    assert shown["session_secure"] is True and shown["csrf_secure"] is True and shown["redirect"] is True
    assert shown["hsts"] == 31536000 and shown["proxy"] == ["HTTP_X_FORWARDED_PROTO", "https"]


def test_cookies_are_secure_by_default_on_a_reachable_server_and_can_be_opted_out(tmp_path):
    reachable = {name: PRODUCTION[name] for name in ("DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DATABASE_URL")}
    assert shown_settings(reachable, tmp_path)["session_secure"] is True
    plain_http = shown_settings({**reachable, "DJANGO_HTTPS": "false"}, tmp_path)
    assert plain_http["session_secure"] is False and plain_http["csrf_secure"] is False
    # check --deploy says what that costs.
    done = run_django(["manage.py", "check", "--deploy"], {**reachable, "DJANGO_HTTPS": "false"}, tmp_path)
    assert "security.W012" in done.stdout + done.stderr


@pytest.mark.parametrize("debug", ["false", ""])
def test_a_reachable_server_will_not_start_without_its_secret_key(tmp_path, debug):
    done = run_django(["manage.py", "check"], {"DJANGO_ALLOWED_HOSTS": "chat.example.com", "DJANGO_DEBUG": debug},
                      tmp_path)
    assert done.returncode != 0
    assert "ImproperlyConfigured: Set DJANGO_SECRET_KEY to a long random value" in done.stderr
    assert not (tmp_path / "secret_key").exists()


def test_a_laptop_needs_no_environment_and_keeps_its_own_key(tmp_path):
    first = shown_settings({}, tmp_path)
    key_file = tmp_path / "secret_key"
    assert key_file.read_text() == first["key"] and len(first["key"]) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first["session_secure"] is False and first["hsts"] == 0  # plain http on 127.0.0.1 works
    assert shown_settings({}, tmp_path)["key"] == first["key"]  # sessions survive a restart
    done = run_django(["manage.py", "check"], {}, tmp_path)
    assert done.returncode == 0, done.stderr


def test_a_bad_proxy_header_stops_startup(tmp_path):
    done = run_django(["manage.py", "check"], {**PRODUCTION, "DJANGO_SECURE_PROXY_SSL_HEADER": "https"}, tmp_path)
    assert done.returncode != 0 and "DJANGO_SECURE_PROXY_SSL_HEADER must look like" in done.stderr


def test_the_helpers(tmp_path):
    assert proxy_ssl_header("") is None
    assert proxy_ssl_header(" X-Forwarded-Proto :  https ") == ("HTTP_X_FORWARDED_PROTO", "https")
    key = local_secret_key(tmp_path)
    assert local_secret_key(tmp_path) == key
    assert not [path for path in tmp_path.iterdir() if path.name != "secret_key"]  # no drafts left behind
    strong = PRODUCTION["DJANGO_SECRET_KEY"]
    assert secret_key_from_environment(value=strong, debug=False, allowed_hosts=["x.example"], var_dir=tmp_path) == strong
    with pytest.raises(ImproperlyConfigured, match="too weak"):
        secret_key_from_environment(value="given", debug=False, allowed_hosts=["x.example"], var_dir=tmp_path)
    assert secret_key_from_environment(value="given", debug=False, allowed_hosts=["localhost"], var_dir=tmp_path) == "given"
    assert secret_key_from_environment(value="", debug=True, allowed_hosts=["x.example"], var_dir=tmp_path) == key


@pytest.mark.django_db
def test_every_response_carries_the_security_headers(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"


@pytest.mark.parametrize("weak", [
    "changeme",
    "x" * 60,  # long, but one character
    "django-insecure-" + "kq3v9XbT2rLw8PzN4mY7uH1cJ6sD0fG5aEQx2Rt9Vb3Nm8Kp4Ls7Wd1Zy6Hj0",
    "kq3v-9XbT2r_Lw8PzN4mY7uH1cJ6sD0fG5aE-Qx2Rt9Vb3",  # 45 characters: under Django's 50
])
def test_a_reachable_server_will_not_start_with_a_weak_secret_key(tmp_path, weak):
    done = run_django(["manage.py", "check"], {**PRODUCTION, "DJANGO_SECRET_KEY": weak}, tmp_path)
    assert done.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY is too weak for a server others can reach" in done.stderr
    assert "get_random_secret_key()" in done.stderr  # how to make a good one
    assert weak not in done.stderr  # the key itself is not echoed into logs


def test_a_weak_key_refused_at_startup_with_debug_too(tmp_path):
    done = run_django(["manage.py", "check"], {**PRODUCTION, "DJANGO_DEBUG": "true", "DJANGO_SECRET_KEY": "changeme"},
                      tmp_path)
    assert done.returncode != 0 and "DJANGO_SECRET_KEY is too weak" in done.stderr


def test_a_laptop_may_use_any_key_it_is_given(tmp_path):
    assert shown_settings({"DJANGO_SECRET_KEY": "changeme"}, tmp_path)["key"] == "changeme"


def test_a_generated_key_passes(tmp_path):
    from django.core.management.utils import get_random_secret_key

    key = get_random_secret_key()
    assert shown_settings({**PRODUCTION, "DJANGO_SECRET_KEY": key}, tmp_path)["key"] == key


def test_allowed_hosts_star_warns_loudly_at_start(tmp_path):
    done = run_django(["manage.py", "check"], {**PRODUCTION, "DJANGO_ALLOWED_HOSTS": "chat.example.com,*"}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "WARNING: DJANGO_ALLOWED_HOSTS contains '*'" in done.stderr
    quiet = run_django(["manage.py", "check"], PRODUCTION, tmp_path)
    assert "DJANGO_ALLOWED_HOSTS" not in quiet.stderr


@pytest.mark.parametrize(("name", "value", "message"), [
    ("LOGIN_FAILURE_LIMIT", "0", "LOGIN_FAILURE_LIMIT must be a whole number of at least 1"),
    ("LOGIN_LOCKOUT_SECONDS", "soon", "LOGIN_LOCKOUT_SECONDS must be a whole number of at least 1"),
    ("LOGIN_LOCKOUT_BY", "user", "LOGIN_LOCKOUT_BY must be"),
])
def test_bad_login_throttling_settings_stop_startup(tmp_path, name, value, message):
    done = run_django(["manage.py", "check"], {**PRODUCTION, name: value}, tmp_path)
    assert done.returncode != 0 and message in done.stderr


def test_login_throttling_settings_come_from_the_environment(tmp_path):
    show = ("import json, django; django.setup(); from django.conf import settings as s; "
            "print(json.dumps([s.AXES_FAILURE_LIMIT, s.LOGIN_LOCKOUT_SECONDS, s.AXES_LOCKOUT_PARAMETERS]))")
    done = run_django(["-c", show], {**PRODUCTION, "LOGIN_FAILURE_LIMIT": "5", "LOGIN_LOCKOUT_SECONDS": "60",
                                     "LOGIN_LOCKOUT_BY": "username+ip_address"}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [5, 60, [["username", "ip_address"]]]


@pytest.mark.django_db
def test_every_page_carries_the_content_security_policy(client):
    policy = client.get("/accounts/login/")["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy


@pytest.mark.parametrize("database_url", ["", "sqlite:////srv/chatrooms/var/db.sqlite3"])
def test_a_reachable_server_will_not_start_on_sqlite_unless_told(tmp_path, database_url):
    """A command run without the environment file would otherwise migrate a new, empty SQLite file."""
    on_sqlite = {**PRODUCTION, "DATABASE_URL": database_url}
    done = run_django(["manage.py", "check"], on_sqlite, tmp_path)
    assert done.returncode != 0
    assert "ImproperlyConfigured: This server answers chat.example.com (DJANGO_ALLOWED_HOSTS) but has no " \
           "DATABASE_URL, or a SQLite one" in done.stderr
    assert "deploy/manage" in done.stderr and "CHATROOMS_ALLOW_SQLITE=true" in done.stderr
    assert not (tmp_path / "db.sqlite3").exists()
    allowed = run_django(["manage.py", "check"], {**on_sqlite, "CHATROOMS_ALLOW_SQLITE": "true"}, tmp_path)
    assert allowed.returncode == 0, allowed.stderr


def test_static_files_get_hashed_names_on_a_server_and_plain_ones_on_a_laptop(tmp_path):
    show = "import django; django.setup(); from django.conf import settings as s; print(s.STORAGES['staticfiles']['BACKEND'])"
    assert run_django(["-c", show], PRODUCTION, tmp_path).stdout.strip() == \
        "whitenoise.storage.CompressedManifestStaticFilesStorage"
    assert run_django(["-c", show], {}, tmp_path).stdout.strip() == "whitenoise.storage.CompressedStaticFilesStorage"
    assert run_django(["-c", show], {**PRODUCTION, "DJANGO_STATIC_MANIFEST": "false"}, tmp_path).stdout.strip() == \
        "whitenoise.storage.CompressedStaticFilesStorage"


@pytest.mark.django_db
def test_pages_reference_hashed_static_files_after_collectstatic(settings, tmp_path):
    """After an upgrade a changed chat.js has a new name, so `expires 30d` in nginx keeps no stale copy."""
    from django.core.management import call_command
    from django.test import Client

    from tests.factories import make_room, make_user

    settings.STATIC_ROOT = tmp_path / "staticfiles"
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}}
    call_command("collectstatic", "--noinput", verbosity=0)
    manifest = json.loads((tmp_path / "staticfiles" / "staticfiles.json").read_text())["paths"]
    client = Client()
    user = make_user()
    client.force_login(user)
    room = make_room(owner=user)
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    for name in ("chatrooms/app.css", "chatrooms/chat.js", "chatrooms/attachments.js", "chatrooms/highlight.css",
                 "django_htmx/htmx-2.min.js"):
        assert manifest[name] != name and f"/static/{manifest[name]}" in page, name
        assert f"/static/{name}" not in page
    served = Client().get(f"/static/{manifest['chatrooms/chat.js']}")
    assert served.status_code == 200 and "immutable" in served["Cache-Control"]
