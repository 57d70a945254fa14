"""The documented deployment (docs/deploy.md) run as far as one machine allows: Debian's nginx with
deploy/nginx.conf, two daphne workers started as deploy/chatrooms@.service starts them, with the
environment of deploy/chatrooms.env.example, PostgreSQL and Redis, the model over HTTP (the scripted
model server); checked from outside, through nginx. The upgrade of section 7 runs on it as written,
through deploy/manage, rolling the workers while answers stream.

Only what a test must is rewritten, by exact substitutions that fail when they no longer match: in
nginx.conf the listen ports, the certificate paths (a self-signed certificate made here), the upstream
workers' ports and the static root; in the env file the secret, the services' URLs, the paths and the
model. Runs on PostgreSQL only (DATABASE_URL): without it, the test skips, or fails under CI unless the
run says it has no PostgreSQL on purpose (.ci/run's first run, on SQLite).
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets
from channels.db import database_sync_to_async
from django.db import connection

from chatrooms.models import Message
from chatrooms.scripted_model_server import ScriptedReply
from chatrooms.server_processes import DAPHNE_OPTIONS
from tests.conftest import require_service
from tests.factories import make_user
from tests.servers import ROOT, DaphneWorker, free_port, scripted_worker_env
from tests.servers import test_database_url as database_url  # (not collected as a test)
from tests.test_deploy_manage import EXPECTED_DEPLOY_WARNINGS, SAMPLE, run_wrapper
from tests.test_two_workers import redis_url  # noqa: F401  (a fixture: REDIS_URL, or a redis-server of its own)
from tests.test_worker_shutdown import wait_for_chunks_stored

pytestmark = [pytest.mark.deployment, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SITE = "chat.example.com"  # the server name in deploy/nginx.conf and docs/deploy.md
ORIGIN = f"https://{SITE}"
PASSWORD = "a-long-enough-password"
TIMEOUT = 30  # a lost answer fails the test; it never hangs it
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
UNIT = ROOT / "deploy" / "chatrooms@.service"
DOCS = ROOT / "docs" / "deploy.md"


def replaced(text: str, old: str, new: str, *, count: int = 1) -> str:
    """`text` with `old` (found exactly `count` times) replaced: a shipped file that changed fails loudly."""
    found = text.count(old)
    assert found == count, f"expected {count} of {old!r} in the shipped file, found {found}: update this test"
    return text.replace(old, new)


def nginx_conf_with_test_certificate(cert: Path, key: Path) -> str:
    text = NGINX_CONF.read_text()
    text = replaced(text, f"/etc/letsencrypt/live/{SITE}/fullchain.pem", str(cert))
    return replaced(text, f"/etc/letsencrypt/live/{SITE}/privkey.pem", str(key))


def listening_on(text: str, http_port: int, https_port: int) -> str:
    text = replaced(text, "listen 80 ", f"listen 127.0.0.1:{http_port} ")  # the default server
    text = replaced(text, "listen 80;", f"listen 127.0.0.1:{http_port};")
    return replaced(text, "listen 443 ", f"listen 127.0.0.1:{https_port} ", count=2)


def nginx_conf_for_test(cert: Path, key: Path, *, http_port: int, https_port: int, workers: list[int],
                        static_root: Path) -> str:
    text = listening_on(nginx_conf_with_test_certificate(cert, key), http_port, https_port)
    text = replaced(text, "server 127.0.0.1:8001 ", f"server 127.0.0.1:{workers[0]} ")
    text = replaced(text, "server 127.0.0.1:8002 ", f"server 127.0.0.1:{workers[1]} ")
    return replaced(text, "alias /srv/chatrooms/staticfiles/;", f"alias {static_root}/;")


def nginx_main_conf(work: Path, site_conf: Path) -> str:
    """What Debian's /etc/nginx/nginx.conf provides around conf.d/, with the pid, logs and temporary
    files in `work` (so that the test needs no system paths, and no root)."""
    temp_paths = "\n".join(f"    {name}_temp_path {work / name};" for name in
                           ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""worker_processes 1;
daemon off;
pid {work / "nginx.pid"};
error_log {work / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {work / "access.log"};
{temp_paths}
    include {site_conf};
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def nginx_test(binary: str, work: Path, main_conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, "-t", "-p", str(work), "-e", str(work / "error.log"), "-c", str(main_conf)],
                          capture_output=True, text=True, timeout=TIMEOUT)


def unit_daphne_argv(port: int) -> list[str]:
    """The unit's ExecStart for instance `port`, with this checkout's Python in place of /srv's venv."""
    lines = [line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, f"expected one ExecStart= in {UNIT}"
    argv = shlex.split(lines[0].removeprefix("ExecStart="))
    assert argv[0] == "/srv/chatrooms/.venv/bin/daphne", f"the unit starts {argv[0]}: update this test"
    assert argv[-1] == "config.asgi:application" and "--proxy-headers" in argv
    joined = " ".join(argv)
    assert " ".join(DAPHNE_OPTIONS) in joined, "the tests' DAPHNE_OPTIONS differ from the unit's"
    assert "-b 127.0.0.1 -p %i" in joined
    return [sys.executable, "-m", "daphne", *(str(port) if arg == "%i" else arg for arg in argv[1:])]


def unit_environment() -> dict[str, str]:
    """The unit's own Environment= lines (the env file's variables come from EnvironmentFile=, below)."""
    env = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            for assignment in shlex.split(line.removeprefix("Environment=")):
                name, _, value = assignment.partition("=")
                env[name] = value
    return env


def unit_setting(name: str) -> str:
    values = [line.partition("=")[2] for line in UNIT.read_text().splitlines() if line.startswith(f"{name}=")]
    assert len(values) == 1, f"expected one {name}= in {UNIT}"
    return values[0]


def env_file_from_sample(path: Path, *, fill_in: dict[str, str], add: dict[str, str]) -> dict[str, str]:
    """deploy/chatrooms.env.example as an operator fills it in, written to `path` (mode 600): each of
    `fill_in` replaces the sample's value (the sample must have it), each of `add` is appended (the
    sample must not have it); every other line stays as shipped. Returns what the shell reads from the
    file, as deploy/manage reads it (`set -a; . file`), for every setting the file holds."""
    lines = SAMPLE.read_text().splitlines()
    names = [m.group(1) for line in lines if (m := re.match(r"([A-Z][A-Z0-9_]*)=", line))]
    missing = sorted(set(fill_in) - set(names))
    assert not missing, f"{SAMPLE.name} no longer sets {missing}: update this test"
    present = sorted(set(add) & set(names))
    assert not present, f"{SAMPLE.name} now sets {present}: fill them in instead of adding them"
    filled = []
    for line in lines:
        name = line.partition("=")[0]
        filled.append(f"{name}={shlex.quote(fill_in[name])}" if name in fill_in and not line.startswith("#") else line)
    filled += [f"{name}={shlex.quote(value)}" for name, value in add.items()]
    text = "\n".join(filled) + "\n"
    path.touch(mode=0o600)
    path.write_text(text)
    read = subprocess.run(["env", "-i", "bash", "-euc", 'set -a; . "$1"; set +a; env -0', "read-env", str(path)],
                          capture_output=True, timeout=TIMEOUT)
    assert read.returncode == 0 and read.stderr == b"", read.stderr.decode(errors="replace")
    shell = dict(item.split("=", 1) for item in read.stdout.decode().split("\0") if item)
    return {name: shell[name] for name in [*names, *add]}


def service_environment(env_file: dict[str, str]) -> dict[str, str]:
    """What systemd gives the unit's process: its own few variables (PATH; HOME and USER for User=),
    then EnvironmentFile=, then Environment=. Nothing of this test run's environment."""
    own = {name: os.environ[name] for name in ("PATH", "HOME", "USER", "LOGNAME", "LANG") if name in os.environ}
    return {**own, **env_file, **unit_environment()}


def make_certificate(work: Path) -> tuple[Path, Path]:
    cert, key = work / "fullchain.pem", work / "privkey.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={SITE}",
         "-addext", f"subjectAltName=DNS:{SITE}"], check=True, capture_output=True, timeout=TIMEOUT)
    return cert, key


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nginx did not start listening on {port}: {log.read_text() if log.exists() else ''}")
            time.sleep(0.05)  # polling a port that has no readiness event


def wait_for_line(path: Path | list[Path], needle: str) -> str:
    """The first line holding `needle` in the log file(s), once written (a log has no event to wait on)."""
    paths = path if isinstance(path, list) else [path]
    deadline = time.monotonic() + TIMEOUT
    while True:
        for p in paths:
            if p.exists():
                for line in p.read_text(errors="replace").splitlines():
                    if needle in line:
                        return line
        assert time.monotonic() < deadline, f"no line with {needle!r} in {paths} after {TIMEOUT} s"
        time.sleep(0.05)


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: str


@dataclass
class Deployment:
    https_port: int
    http_port: int
    workers: list[DaphneWorker]
    work: Path
    tls: ssl.SSLContext  # trusts the test's certificate, checks the host name
    model_server: Any
    logs: list[Path] = field(default_factory=list)
    env_file: Path | None = None  # /etc/chatrooms.env

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`sudo deploy/manage <args>`: with this deployment's env file, as this user (the service's
        user here), this checkout and its Python, and no input (an upgrade may run unattended)."""
        return run_wrapper(list(args), CHATROOMS_ENV_FILE=str(self.env_file),
                           CHATROOMS_USER=pwd.getpwuid(os.geteuid()).pw_name, CHATROOMS_DIR=str(ROOT),
                           CHATROOMS_PYTHON=sys.executable)

    @property
    def access_log(self) -> Path:
        return self.work / "access.log"

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None, body: str | None = None,
                client: str = "127.0.0.1", https: bool = True, host: str = SITE, sni: str | None = SITE) -> Response:
        """One request to nginx as a browser at address `client` (any of 127.0.0.0/8) would send it to
        https://chat.example.com (or http://), with that name in SNI and in Host."""
        port = self.https_port if https else self.http_port
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(client, 0))
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
        tls = self.tls if sni == SITE else unchecked_tls()
        conn.sock = tls.wrap_socket(raw, server_hostname=sni) if https else raw
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return Response(response.status, response.headers, response.read().decode(errors="replace"))
        finally:
            conn.close()

    def log_in(self, username: str, *, client: str = "127.0.0.1") -> str:
        """Django's login form over HTTPS through nginx, as a script does it (a Referer, no Origin);
        returns the Cookie header."""
        page = self.request("GET", "/accounts/login/", client=client)
        assert page.status == 200, page.body[:500]
        cookies = dict(cookie_pairs(page.headers))
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.body).group(1)
        form = urllib.parse.urlencode({"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token})
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie_header(cookies)}
        # Django sees the request as HTTPS (X-Forwarded-Proto from nginx), so it wants a Referer of the site.
        refused = self.request("POST", "/accounts/login/", body=form, client=client, headers=headers)
        assert refused.status == 403 and "Referer" in refused.body, refused.status
        landed = self.request("POST", "/accounts/login/", body=form, client=client,
                              headers={**headers, "Referer": f"{ORIGIN}/accounts/login/"})
        assert landed.status == 302, f"login answered {landed.status}: {landed.body[:500]}"
        assert landed.headers["Location"] in ("/", f"{ORIGIN}/")
        set_cookies = landed.headers.get_all("Set-Cookie") or []
        session = next(c for c in set_cookies if c.startswith("sessionid="))
        assert "; Secure" in session and "; HttpOnly" in session, session
        cookies.update(cookie_pairs(landed.headers))
        return cookie_header(cookies)

    async def socket_through_nginx(self, cookie: str, *, client: str) -> Any:
        """wss://chat.example.com/ws/chat/ through nginx, from address `client`, past hello and rooms."""
        ws = await websockets.connect(
            f"wss://{SITE}:{self.https_port}/ws/chat/", host="127.0.0.1", port=self.https_port,
            ssl=self.tls, server_hostname=SITE, local_addr=(client, 0), proxy=None,
            additional_headers={"Cookie": cookie, "Origin": ORIGIN}, open_timeout=TIMEOUT, max_size=None)
        await until(ws, "rooms")
        return ws

    async def socket_to_worker(self, worker: DaphneWorker, cookie: str, *, client: str) -> Any:
        """A socket straight to one worker with the headers nginx would set for a browser at `client`."""
        ws = await websockets.connect(
            f"ws://{SITE}:{worker.port}/ws/chat/", host="127.0.0.1", port=worker.port, proxy=None,
            additional_headers={"Cookie": cookie, "Origin": ORIGIN, "X-Forwarded-For": client,
                                "X-Forwarded-Proto": "https"}, open_timeout=TIMEOUT, max_size=None)
        await until(ws, "rooms")
        return ws

    def worker_serving(self, client: str, request: str) -> DaphneWorker:
        """The worker whose access log shows `request` from `client` (as daphne --proxy-headers logs it)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            for worker, log in zip(self.workers, self.logs):
                lines = log.read_text(errors="replace").splitlines()
                if any(l.startswith(f"{client}:0 ") and f'"{request}' in l for l in lines):
                    return worker
            assert time.monotonic() < deadline, f"no worker logged {request} from {client}"
            time.sleep(0.05)


def unchecked_tls() -> ssl.SSLContext:
    """For a name other than the site's: no certificate check, so that only nginx may refuse it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def cookie_pairs(headers: http.client.HTTPMessage) -> list[tuple[str, str]]:
    pairs = []
    for value in headers.get_all("Set-Cookie") or []:
        name, _, rest = value.partition("=")
        pairs.append((name, rest.split(";", 1)[0]))
    return pairs


def cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


async def recv(ws: Any) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def until(ws: Any, frame_type: str, **match: Any) -> list[dict[str, Any]]:
    frames = []
    while True:
        frames.append(await recv(ws))
        if frames[-1]["type"] == frame_type and all(frames[-1].get(k) == v for k, v in match.items()):
            return frames


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["chunk"]["delta"] for f in frames
                   if f["type"] == "stream.chunk" and f["chunk"]["type"] == "text-delta")


@dataclass
class UpgradeSteps:
    """docs/deploy.md, section 7, as the test runs it."""
    manage: list[list[str]]  # each `sudo deploy/manage ...` line's arguments, in order
    ports: list[int]  # the rolling restart's workers, in order
    wait_for_health: str  # the loop's lines after `systemctl restart`: they wait for the worker's /healthz


def upgrade_steps() -> UpgradeSteps:
    section = DOCS.read_text().split("\n## 7. Upgrades\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [re.sub(r"\s+#\s.*$", "", line) for line in block.splitlines()]
    assert lines[:3] == ["cd /srv/chatrooms", "sudo git pull --ff-only", "sudo .venv/bin/pip install -e ."], lines
    rest = lines[3:]
    manage = []
    while rest[0].startswith("sudo deploy/manage "):
        manage.append(shlex.split(rest.pop(0))[2:])
    loop = re.fullmatch(r"for port in ([\d ]+); do", rest.pop(0))
    assert loop and rest.pop(0) == '    sudo systemctl restart "chatrooms@$port"' and rest.pop() == "done", block
    return UpgradeSteps(manage, [int(port) for port in loop.group(1).split()], "\n".join(rest))


async def socket_on(deployment: Deployment, worker: DaphneWorker, cookie: str, *, clients: list[str]) -> Any:
    """A socket through nginx that nginx gave to `worker` (round robin: the next connection, or the one after)."""
    for client in clients:
        ws = await deployment.socket_through_nginx(cookie, client=client)
        if await asyncio.to_thread(deployment.worker_serving, client, "WSCONNECT /ws/chat/") is worker:
            return ws
        await ws.close()
    pytest.fail(f"nginx gave none of {len(clients)} sockets to the worker on port {worker.port}")


@pytest.fixture(scope="module")
def deployment(django_db_setup, model_server, redis_url):  # noqa: F811
    on_postgresql = connection.vendor == "postgresql"
    why = "the deployment runs on PostgreSQL: run with DATABASE_URL=postgres://... (.ci/run's second run does)"
    if not on_postgresql and os.environ.get("CHATROOMS_TESTS_WITHOUT_POSTGRESQL"):
        pytest.skip(f"a run without PostgreSQL on purpose; {why}")
    require_service("PostgreSQL", on_postgresql, why)
    nginx = nginx_binary()
    require_service("nginx", nginx is not None, "install nginx (apt-get install nginx)")
    require_service("openssl", shutil.which("openssl") is not None, "install openssl")
    work = Path(tempfile.mkdtemp(prefix="chatrooms-deployment-"))
    work.chmod(0o755)  # nginx's workers (nobody, when started as root) read the static files
    static_root, var_dir = work / "staticfiles", work / "var"
    processes: list[subprocess.Popen[bytes]] = []
    workers: list[DaphneWorker] = []
    try:
        cert, key = make_certificate(work)
        # /etc/chatrooms.env: the sample, filled in for this machine's services. The site's name and
        # origin, the HTTPS and HSTS settings, SIGNUP_ENABLED: as shipped (nginx.conf names the same site).
        model = scripted_worker_env(model_server)
        env_file = work / "chatrooms.env"
        env = env_file_from_sample(env_file, fill_in={
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "DATABASE_URL": database_url(),
            "REDIS_URL": redis_url,
            "DJANGO_STATIC_ROOT": str(static_root),
            "CHATROOMS_VAR_DIR": str(var_dir),
            "LLM_MODEL": model.pop("LLM_MODEL"),
        }, add={
            **model,  # the scripted model server's address, a key, no other models
            # A killed worker's streams are found stale in seconds, not the default 30.
            "STREAM_HEARTBEAT_SECONDS": "1", "STREAM_STALE_SECONDS": "3",
        })
        assert env["DJANGO_ALLOWED_HOSTS"] == SITE and env["DJANGO_CSRF_TRUSTED_ORIGINS"] == ORIGIN
        assert env["DJANGO_SECURE_PROXY_SSL_HEADER"] == "X-Forwarded-Proto: https"
        ports = [free_port(), free_port()]
        for port in ports:
            worker = DaphneWorker({}, port, log_path=work / f"worker-{port}.log")
            worker.argv = unit_daphne_argv(port)
            # daphne writes its access log to stdout, block-buffered when that is not a terminal (a file
            # here, the journal under systemd): the unit's PYTHONUNBUFFERED=1 makes the lines with the
            # clients' addresses arrive at once; without it the tests below wait for them in vain.
            worker.env = service_environment(env)
            workers.append(worker)
        deployment = Deployment(0, 0, workers, work, ssl.create_default_context(cafile=str(cert)), model_server,
                                logs=[work / f"worker-{port}.log" for port in ports], env_file=env_file)
        # The first time (docs/deploy.md, section 2): collectstatic (the test database is migrated already).
        collect = deployment.manage("collectstatic", "--noinput", "-v", "0")
        assert collect.returncode == 0, collect.stdout + collect.stderr
        for worker in workers:
            worker.start()

        http_port, https_port = free_port(), free_port()
        site_conf, main_conf = work / "chatrooms.conf", work / "nginx.conf"
        site_conf.write_text(nginx_conf_for_test(cert, key, http_port=http_port, https_port=https_port,
                                                 workers=ports, static_root=static_root))
        main_conf.write_text(nginx_main_conf(work, site_conf))
        checked = nginx_test(nginx, work, main_conf)
        assert checked.returncode == 0, checked.stderr
        process = subprocess.Popen([nginx, "-p", str(work), "-e", str(work / "error.log"), "-c", str(main_conf)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        processes.append(process)
        wait_for_port(https_port, process, work / "error.log")
        deployment.http_port, deployment.https_port = http_port, https_port
        yield deployment
    finally:
        for process in processes:
            process.terminate()
            process.wait(TIMEOUT)
        for worker in workers:
            worker.stop(signal.SIGKILL)
        for log in sorted(work.glob("*.log")):
            print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}")  # shown when a test fails
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def sam():
    return make_user("sam", PASSWORD)


@pytest.fixture
def deployment_then_stopped(deployment):
    """The deployment, for its last test: afterwards its workers stop (SIGTERM), before the test's
    database is emptied (their sweep for stale streams, running during that TRUNCATE, can deadlock it)."""
    yield deployment
    for worker in deployment.workers:
        worker.stop()


def test_nginx_accepts_the_config_as_shipped(tmp_path):
    """`nginx -t` on deploy/nginx.conf as an operator installs it: only the certificate paths differ
    (and, when the test does not run as root, the ports: `nginx -t` binds them, and only root may
    bind 80 and 443)."""
    nginx = nginx_binary()
    require_service("nginx", nginx is not None, "install nginx (apt-get install nginx)")
    require_service("openssl", shutil.which("openssl") is not None, "install openssl")
    cert, key = make_certificate(tmp_path)
    site_conf, main_conf = tmp_path / "chatrooms.conf", tmp_path / "nginx.conf"
    text = nginx_conf_with_test_certificate(cert, key)
    site_conf.write_text(text if os.geteuid() == 0 else listening_on(text, free_port(), free_port()))
    main_conf.write_text(nginx_main_conf(tmp_path, site_conf))
    checked = nginx_test(nginx, tmp_path, main_conf)
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr and "test is successful" in checked.stderr
    assert "warn" not in checked.stderr, checked.stderr


def test_health_static_files_and_plain_http(deployment):
    health = deployment.request("GET", "/healthz")
    assert health.status == 200, health.body
    answer = json.loads(health.body)
    assert answer["status"] == "ok" and answer["database"].startswith("ok") and answer["channelLayer"].startswith("ok")
    # Only this machine may ask (`allow 127.0.0.1`): another address is refused by nginx itself.
    assert deployment.request("GET", "/healthz", client="127.0.0.2").status == 403
    # Health checks stay out of the access log; a page that came after them is in it.
    deployment.request("GET", "/accounts/login/?after-healthz")
    wait_for_line(deployment.access_log, "/accounts/login/?after-healthz")
    assert "/healthz" not in deployment.access_log.read_text()

    # Plain http redirects to https, to the same path.
    redirect = deployment.request("GET", "/accounts/login/?next=/", https=False)
    assert redirect.status == 301 and redirect.headers["Location"] == f"{ORIGIN}/accounts/login/?next=/"

    # Static files come from collectstatic's directory, served by nginx with a long expiry.
    page = deployment.request("GET", "/accounts/login/")
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.body)
    assert assets, page.body[:1000]
    for asset in assets:
        served = deployment.request("GET", asset)
        assert served.status == 200 and served.headers["Expires"], asset
        assert "public" in ", ".join(served.headers.get_all("Cache-Control")), asset


def test_a_request_for_another_host_gets_no_answer_and_real_addresses_reach_the_workers(deployment):
    # A Host that is not the site's: nginx closes the connection (444); Django never sees it.
    for https in (True, False):
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            deployment.request("GET", "/unknown-host-probe", host="203.0.113.10", https=https)
    # TLS for another name (or none: an address) is refused at the handshake.
    for sni in ("unknown.example.org", None):
        with pytest.raises(ssl.SSLError):
            deployment.request("GET", "/unknown-host-probe", sni=sni)

    # The address daphne logs is the client's (not nginx's, and not one the client claims).
    deployment.request("GET", "/accounts/login/?from-a-client", client="127.0.0.2",
                       headers={"X-Forwarded-For": "198.51.100.7"})
    line = wait_for_line(deployment.logs, "/accounts/login/?from-a-client")
    assert line.startswith("127.0.0.2:0 "), line
    logged = "".join(log.read_text(errors="replace") for log in deployment.logs)
    assert "198.51.100.7" not in logged and "/unknown-host-probe" not in logged


async def test_the_upgrade_as_documented_rolls_the_workers_without_losing_an_answer(deployment, sam):
    """docs/deploy.md, section 7, run as written through deploy/manage: migrate, collectstatic, the
    deploy check, then the rolling restart, each worker stopped as `systemctl restart` stops it while
    an answer streams on it. Its answer ends `interrupted` and stored, the browser comes back through
    nginx to the other worker meanwhile, and after both restarts a new question is answered."""
    steps = upgrade_steps()
    # `git pull --ff-only` and `pip install -e .` are not run: they need a network and a second release.
    # The rest runs on the same release again, as an upgrade without a migration or static change does.
    said = {}
    for args in steps.manage:
        done = await asyncio.to_thread(deployment.manage, *args)
        said[args[0]] = done.stdout + done.stderr
        assert done.returncode == 0, f"deploy/manage {shlex.join(args)}: {said[args[0]]}"
    assert list(said) == ["migrate", "collectstatic", "check"], steps.manage
    assert "No migrations to apply." in said["migrate"]  # the test database: the env file's DATABASE_URL
    assert "--clear" not in steps.manage[1]  # files that pages still open name stay (section 4)
    copied = said["collectstatic"]
    assert re.search(r"^0 static files copied to .*, \d+ unmodified", copied, re.M), copied
    assert set(re.findall(r"\((\w+\.[EW]\d+)\)", said["check"])) == EXPECTED_DEPLOY_WARNINGS, said["check"]

    # systemctl restart: the unit's KillSignal=, SIGKILL only after TimeoutStopSec=, then ExecStart= again.
    kill_signal = getattr(signal, unit_setting("KillSignal"))
    stop_timeout = float(unit_setting("TimeoutStopSec"))
    assert kill_signal == signal.SIGTERM
    # nginx.conf's upstream lists the docs' ports in this order; the test's workers stand in for them.
    assert steps.ports == [8001, 8002]
    model_server = deployment.model_server
    model_server.reset()
    addresses = iter(f"127.0.1.{n}" for n in range(1, 100))  # one per socket: the workers' logs tell them apart
    cookie = await asyncio.to_thread(deployment.log_in, "sam", client="127.0.1.100")
    asker = await socket_on(deployment, deployment.workers[0], cookie, clients=[next(addresses) for _ in range(3)])
    await asker.send(json.dumps({"type": "room.create", "name": "Upgraded"}))
    room_id = (await until(asker, "room.created"))[-1]["room"]["id"]
    await asker.send(json.dumps({"type": "room.join", "roomId": room_id}))
    await until(asker, "messages", roomId=room_id)
    answers = []
    for index, (port, worker) in enumerate(zip(steps.ports, deployment.workers)):
        other = deployment.workers[1 - index]
        argv = list(worker.argv)
        # The asker's socket is on `worker`: so is the answer it asks for. A viewer on the other worker.
        viewer = await deployment.socket_to_worker(other, cookie, client=next(addresses))
        await viewer.send(json.dumps({"type": "room.join", "roomId": room_id}))
        await until(viewer, "messages", roomId=room_id)
        tokens = [f"v{index}.{i} " for i in range(8)]
        answers.append("".join(tokens))
        model_server.enqueue(ScriptedReply(tokens=tokens, hold_open=True))
        await asker.send(json.dumps({"type": "chat.send", "roomId": room_id, "requestId": f"u{index}", "text": "go"}))
        seen = await until(viewer, "stream.start")
        stream_id = seen[-1]["streamId"]
        while text_of(seen) != answers[-1]:
            seen.append(await recv(viewer))
            assert seen[-1]["type"] != "stream.done", seen[-1]

        stopped_at = time.monotonic()
        code = await asyncio.to_thread(worker.stop, kill_signal, stop_timeout)
        print(f"chatrooms@{port} stopped in {time.monotonic() - stopped_at:.1f} s (exit {code})")
        assert code != -signal.SIGKILL, f"chatrooms@{port} needed SIGKILL after {stop_timeout} s"
        done = (await until(viewer, "stream.done", streamId=stream_id))[-1]
        assert done["status"] == "interrupted" and done["message"]["content"] == answers[-1], done
        stored = await database_sync_to_async(lambda: Message.objects.values_list("status", "content").get(
            id=done["message"]["id"]))()
        assert stored == ("interrupted", answers[-1])
        with pytest.raises(websockets.ConnectionClosed):  # nginx closes the asker's socket with the worker's
            while True:
                await recv(asker)
        # The browser comes back through nginx, to the other worker, and shows the stored answer.
        client = next(addresses)
        asker = await deployment.socket_through_nginx(cookie, client=client)
        assert await asyncio.to_thread(deployment.worker_serving, client, "WSCONNECT /ws/chat/") is other
        await asker.send(json.dumps({"type": "room.join", "roomId": room_id}))
        messages = (await until(asker, "messages", roomId=room_id))[-1]["messages"]
        assert (messages[-1]["status"], messages[-1]["content"]) == ("interrupted", answers[-1])
        await viewer.close()

        # ExecStart= again, the same command line (its log in a new file), and the docs' wait for /healthz.
        assert worker.argv == argv == unit_daphne_argv(worker.port)
        worker.log_path = deployment.logs[index] = deployment.work / f"worker-{worker.port}-restarted.log"
        await asyncio.to_thread(worker.start)
        loop = f"for port in {worker.port}; do\n{steps.wait_for_health}\ndone"
        waited = await asyncio.to_thread(subprocess.run, ["sh", "-c", loop], capture_output=True, text=True,
                                         timeout=90)
        assert waited.returncode == 0 and "is not healthy" not in waited.stdout, waited.stdout + waited.stderr
        print(f"chatrooms@{port} restarted and healthy {time.monotonic() - stopped_at:.1f} s after its stop")

    # Both restarted: the asker (now on the first worker again) asks anew, through nginx.
    await asker.send(json.dumps({"type": "chat.send", "roomId": room_id, "requestId": "after", "text": "again"}))
    done = (await until(asker, "stream.done"))[-1]
    assert done["status"] == "complete" and done["message"]["content"] == "Echo: again", done
    statuses = await database_sync_to_async(lambda: list(
        Message.objects.filter(role="assistant").order_by("id").values_list("status", flat=True)))()
    assert statuses == ["interrupted", "interrupted", "complete"]
    await asker.close()


async def test_log_in_stream_across_workers_and_recover_a_killed_worker(deployment_then_stopped, sam):
    """Log in over https; a stream started through nginx is seen live on the other worker; its worker
    is killed mid-answer; the other worker ends it `interrupted` and the room takes a new question.
    (The module's last test: it kills one worker, and the other stops after it.)"""
    deployment = deployment_then_stopped
    model_server = deployment.model_server
    model_server.reset()
    cookie = await asyncio.to_thread(deployment.log_in, "sam", client="127.0.0.3")
    home = await asyncio.to_thread(deployment.request, "GET", "/", client="127.0.0.3", headers={"Cookie": cookie})
    assert home.status in (200, 302) and "/accounts/login/" not in (home.headers["Location"] or ""), home.status

    asker = await deployment.socket_through_nginx(cookie, client="127.0.0.3")
    running = await asyncio.to_thread(deployment.worker_serving, "127.0.0.3", "WSCONNECT /ws/chat/")
    other = next(worker for worker in deployment.workers if worker is not running)
    viewer = await deployment.socket_to_worker(other, cookie, client="127.0.0.4")

    await asker.send(json.dumps({"type": "room.create", "name": "Deployed"}))
    room_id = (await until(asker, "room.created"))[-1]["room"]["id"]
    for ws in (asker, viewer):
        await ws.send(json.dumps({"type": "room.join", "roomId": room_id}))
        await until(ws, "messages", roomId=room_id)

    # The answer runs on the asker's worker; the viewer on the other worker sees all of it while
    # the model still holds the answer open.
    tokens = [f"w{i} " for i in range(30)]
    model_server.enqueue(ScriptedReply(tokens=tokens, hold_open=True))
    await asker.send(json.dumps({"type": "chat.send", "roomId": room_id, "requestId": "r1", "text": "go"}))
    seen = await until(viewer, "stream.start")
    stream_id = seen[-1]["streamId"]
    while text_of(seen) != "".join(tokens):
        seen.append(await recv(viewer))
        assert seen[-1]["type"] != "stream.done", seen[-1]
    await wait_for_chunks_stored(stream_id, max(f["index"] for f in seen if f["type"] == "stream.chunk") + 1)

    # The worker dies without a chance to store anything; nginx closes the asker's socket.
    killed_at = time.monotonic()
    running.stop(signal.SIGKILL)
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await recv(asker)
    done = (await until(viewer, "stream.done", streamId=stream_id))[-1]
    print(f"the killed worker's answer ended after {time.monotonic() - killed_at:.1f} s")
    assert done["status"] == "interrupted" and done["message"]["content"] == "".join(tokens)

    # The asker comes back through nginx (now to the surviving worker) and asks again.
    asker = await deployment.socket_through_nginx(cookie, client="127.0.0.3")
    await asker.send(json.dumps({"type": "room.join", "roomId": room_id}))
    messages = (await until(asker, "messages", roomId=room_id))[-1]["messages"]
    assert messages[-1]["status"] == "interrupted" and messages[-1]["content"] == "".join(tokens)
    await asker.send(json.dumps({"type": "chat.send", "roomId": room_id, "requestId": "r2", "text": "again"}))
    for ws in (asker, viewer):
        done = (await until(ws, "stream.done"))[-1]
        assert done["status"] == "complete" and done["message"]["content"] == "Echo: again"
    health = await asyncio.to_thread(deployment.request, "GET", "/healthz")
    assert health.status == 200, health.body
    stored = await database_sync_to_async(lambda: list(
        Message.objects.filter(role="assistant").order_by("id").values_list("status", flat=True)))()
    assert stored == ["interrupted", "complete"]
    await asker.close()
    await viewer.close()
