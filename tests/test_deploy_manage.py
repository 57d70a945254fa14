"""deploy/manage and deploy/chatrooms.env.example: the sample environment reaches both the shell and Django
(`check --deploy` prints only the documented warnings), and the wrapper refuses clearly what it cannot run."""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from django.core.management.utils import get_random_secret_key

from tests.servers import ROOT

SAMPLE = ROOT / "deploy" / "chatrooms.env.example"
WRAPPER = ROOT / "deploy" / "manage"
# docs/deploy.md, section 2: with HSTS started small and subdomains/preload off, these two and no others.
EXPECTED_DEPLOY_WARNINGS = {"security.W005", "security.W021"}

is_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs the wrapper as another user: needs root")


def sample_with(tmp_path: Path, **values: str) -> Path:
    """The sample file with some values replaced (as an operator fills it in), mode 600."""
    lines = []
    for line in SAMPLE.read_text().splitlines():
        name = line.partition("=")[0]
        lines.append(f"{name}={values.pop(name)}" if name in values and not line.startswith("#") else line)
    lines += [f"{name}={value}" for name, value in values.items()]
    path = tmp_path / "chatrooms.env"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def filled_in(tmp_path: Path) -> Path:
    # Django's key generator uses ( ) $ & * ...: single quotes, as the sample says.
    return sample_with(tmp_path, DJANGO_SECRET_KEY=f"'{get_random_secret_key()}'",
                       DJANGO_STATIC_ROOT=str(tmp_path / "static"), CHATROOMS_VAR_DIR=str(tmp_path / "var"))


def run_wrapper(args: list[str], *, as_user: str | None = None, **overrides: str) -> subprocess.CompletedProcess[str]:
    """deploy/manage with none of this run's Django settings in its environment, and no input."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("DJANGO_", "CHATROOMS_", "DATABASE_URL", "REDIS_URL", "LLM_"))}
    env.update(overrides)
    command = [str(WRAPPER), *args]
    if as_user is not None:
        command = ["runuser", "-u", as_user, "--", "env", *(f"{k}={v}" for k, v in overrides.items()), *command]
    return subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


@pytest.fixture
def open_dir():
    """A directory under /tmp that another user may enter (pytest's own tmp_path is root's only)."""
    with tempfile.TemporaryDirectory() as place:
        Path(place).chmod(0o755)
        yield Path(place)


def test_the_sample_env_file_reaches_the_shell_whole():
    shown = subprocess.run(
        ["bash", "-euc", 'set -a; . "$1"; set +a; printf "%s|%s|%s" "$DJANGO_SECURE_PROXY_SSL_HEADER" '
         '"$DJANGO_SSL_REDIRECT" "$DJANGO_HSTS_SECONDS"', "show", str(SAMPLE)],
        capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    assert shown.stdout == "X-Forwarded-Proto: https|true|300"


def test_every_sample_line_is_an_assignment_systemd_and_the_shell_read_alike():
    for line in SAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*=(?:[^\s'\"$`\\#]*|'[^']*')", line), line


def test_check_deploy_with_the_sample_env_prints_only_the_documented_warnings(tmp_path):
    me = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    done = run_wrapper(["check", "--deploy"], CHATROOMS_ENV_FILE=str(filled_in(tmp_path)), CHATROOMS_USER=me,
                       CHATROOMS_PYTHON=sys.executable)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert set(re.findall(r"\((\w+\.[EW]\d+)\)", output)) == EXPECTED_DEPLOY_WARNINGS, output
    assert f"System check identified {len(EXPECTED_DEPLOY_WARNINGS)} issues (0 silenced)." in output
    assert not (tmp_path / "var" / "db.sqlite3").exists()  # the sample's PostgreSQL, not a new SQLite file


def test_the_placeholder_secret_key_is_refused(tmp_path):
    me = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    env_file = sample_with(tmp_path, DJANGO_STATIC_ROOT=str(tmp_path / "s"), CHATROOMS_VAR_DIR=str(tmp_path / "v"))
    done = run_wrapper(["check"], CHATROOMS_ENV_FILE=str(env_file), CHATROOMS_USER=me,
                       CHATROOMS_PYTHON=sys.executable)
    assert done.returncode != 0 and "DJANGO_SECRET_KEY is too weak" in done.stderr


def test_a_missing_env_file_is_refused(tmp_path):
    done = run_wrapper(["migrate"], CHATROOMS_ENV_FILE=str(tmp_path / "nowhere.env"))
    assert done.returncode == 2
    assert f"deploy/manage: {tmp_path / 'nowhere.env'} does not exist: copy deploy/chatrooms.env.example" in done.stderr


def test_no_command_is_refused():
    done = run_wrapper([])
    assert done.returncode == 2 and "usage: deploy/manage <manage.py command>" in done.stderr


def test_an_unquoted_value_with_a_space_is_refused(tmp_path):
    env_file = sample_with(tmp_path, DJANGO_SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto: https")
    done = run_wrapper(["check"], CHATROOMS_ENV_FILE=str(env_file), CHATROOMS_USER="root")
    assert done.returncode == 2
    assert "is not a valid shell environment file (quote values with spaces" in done.stderr
    assert "https: command not found" in done.stderr


@is_root
def test_an_env_file_the_caller_cannot_read_is_refused(open_dir):
    tmp_path = open_dir
    env_file = filled_in(tmp_path)  # root's, mode 600, as documented
    done = run_wrapper(["migrate"], as_user="nobody", CHATROOMS_ENV_FILE=str(env_file))
    assert done.returncode == 2
    assert f"cannot read {env_file} as nobody: run this as root" in done.stderr
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    done = run_wrapper(["migrate"], as_user="nobody", CHATROOMS_ENV_FILE=str(filled_in(hidden)))
    assert done.returncode == 2
    assert f"cannot read {hidden / 'chatrooms.env'} as nobody (or it does not exist): run this as root" in done.stderr


@is_root
@pytest.mark.parametrize("path", [None, "/usr/bin:/bin"], ids=["sudo", "cron"])
def test_root_runs_manage_py_as_the_service_user_with_the_environment(open_dir, path):
    """A stand-in for Python that shows who runs it, where, with what; also with cron's PATH, which
    lacks /usr/sbin (runuser's place)."""
    if True:
        place, place_path = str(open_dir), open_dir
        (place_path / "manage.py").write_text("")
        fake_python = place_path / "python"
        fake_python.write_text('#!/bin/sh\necho "$(id -un)|$PWD|$DJANGO_SECURE_PROXY_SSL_HEADER|$*"\n')
        fake_python.chmod(0o755)
        env_file = place_path / "chatrooms.env"
        shutil.copy(SAMPLE, env_file)
        env_file.chmod(0o600)
        done = run_wrapper(["migrate", "--noinput"], CHATROOMS_ENV_FILE=str(env_file), CHATROOMS_USER="nobody",
                           CHATROOMS_DIR=place, CHATROOMS_PYTHON=str(fake_python), **({"PATH": path} if path else {}))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"nobody|{place}|X-Forwarded-Proto: https|manage.py migrate --noinput"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


@is_root
def test_someone_else_is_refused(open_dir):
    env_file = filled_in(open_dir)
    env_file.chmod(0o644)
    done = run_wrapper(["migrate"], as_user="nobody", CHATROOMS_ENV_FILE=str(env_file), CHATROOMS_USER="root")
    assert done.returncode == 2 and "run this as root (sudo" in done.stderr and "not as nobody" in done.stderr


def test_an_unknown_service_user_is_refused(tmp_path):
    done = run_wrapper(["migrate"], CHATROOMS_ENV_FILE=str(filled_in(tmp_path)), CHATROOMS_USER="no-such-user-15")
    assert done.returncode == 2 and "no user no-such-user-15 (CHATROOMS_USER)" in done.stderr


def test_the_unit_the_readme_and_the_docs_agree():
    from chatrooms.server_processes import DAPHNE_OPTIONS

    unit = (ROOT / "deploy" / "chatrooms@.service").read_text()
    readme = (ROOT / "README.md").read_text()
    docs = (ROOT / "docs" / "deploy.md").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    daphne_lines = [exec_start] + [line for line in readme.splitlines() if line.startswith(".venv/bin/daphne ")]
    assert len(daphne_lines) == 3
    for line in daphne_lines:
        assert " ".join(DAPHNE_OPTIONS) in line and "--proxy-headers" in line, line
    # One install that cannot drift from the checkout the services run, and every command through the wrapper.
    installs = [line for line in docs.splitlines() if "pip install" in line and line.lstrip().startswith("sudo")]
    assert len(installs) == 2 and all("pip install -e ." in line for line in installs), installs
    assert "WorkingDirectory=/srv/chatrooms\n" in unit and "EnvironmentFile=/etc/chatrooms.env\n" in unit
    assert "manage.py migrate" not in docs and "sudo deploy/manage migrate" in docs
    assert "root /srv/chatrooms/deploy/manage cleanup_streams" in docs
    assert "DJANGO_SECURE_PROXY_SSL_HEADER='X-Forwarded-Proto: https'" in docs
    for code in EXPECTED_DEPLOY_WARNINGS:
        assert f"`{code}`" in docs
