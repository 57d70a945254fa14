"""/healthz: 200 when the database and the channel layer answer, 503 naming what failed; from this machine
without the Host and HTTPS checks, for a worker's own health check."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from django.test import AsyncClient, Client

from tests.servers import DaphneWorker, free_port

pytestmark = pytest.mark.django_db(transaction=True)


async def test_healthz_is_ok_when_both_answer():
    response = await AsyncClient().get("/healthz")
    body = response.json()
    assert response.status_code == 200 and body["status"] == "ok"
    assert body["database"].startswith("ok (") and body["channelLayer"].startswith("ok (")
    assert "no-cache" in response["Cache-Control"]


async def test_healthz_is_503_when_the_channel_layer_is_down(settings):
    settings.CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]},  # nothing listens there
    }}
    response = await AsyncClient().get("/healthz")
    body = response.json()
    assert response.status_code == 503 and body["status"] == "failing"
    assert body["database"].startswith("ok") and body["channelLayer"].startswith("failed: ")


async def test_healthz_answers_get_only():
    assert (await AsyncClient().post("/healthz")).status_code == 405


# A worker of a real deployment: its own host name only, and plain http redirected to https.
DEPLOYED = {"ALLOWED_HOSTS": ["chat.example.com"], "SECURE_SSL_REDIRECT": True,
            "SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https")}


def test_a_plain_local_health_check_answers_a_deployed_worker(settings):
    for name, value in DEPLOYED.items():
        setattr(settings, name, value)
    # What `curl http://127.0.0.1:8001/healthz` sends: no X-Forwarded-Proto, Host 127.0.0.1:8001.
    response = Client().get("/healthz", HTTP_HOST="127.0.0.1:8001", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert Client().get("/healthz", HTTP_HOST="localhost:8002", REMOTE_ADDR="::1").status_code == 200
    assert Client().post("/healthz", HTTP_HOST="127.0.0.1:8001").status_code == 405


@pytest.mark.parametrize(("path", "remote_addr"), [
    ("/healthz", "203.0.113.7"),  # the health path from elsewhere (nginx forwards the client's address)
    ("/healthz", ""),
    ("/accounts/login/", "127.0.0.1"),  # another path from this machine
    ("/healthz/", "127.0.0.1"),
])
def test_only_the_local_health_check_skips_the_host_and_https_checks(settings, path, remote_addr):
    for name, value in DEPLOYED.items():
        setattr(settings, name, value)
    response = Client().get(path, HTTP_HOST="127.0.0.1:8001", REMOTE_ADDR=remote_addr)
    assert response.status_code == 400  # DisallowedHost, as before
    redirected = Client().get(path, HTTP_HOST="chat.example.com", REMOTE_ADDR=remote_addr)
    assert redirected.status_code == 301 and redirected["Location"].startswith("https://chat.example.com/")


def test_a_deployed_daphne_worker_answers_a_plain_local_curl(tmp_path):
    """The real thing: a daphne worker with a deployment's environment, asked as a monitoring script would."""
    env = {"DJANGO_ALLOWED_HOSTS": "chat.example.com", "DJANGO_SSL_REDIRECT": "true",
           "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https", "DJANGO_HSTS_SECONDS": "300",
           "DJANGO_SECRET_KEY": "kq3v-9XbT2r_Lw8PzN4mY7uH1cJ6sD0fG5aE-Qx2Rt9Vb3Nm8Kp4Ls7Wd1Zy6Hj0",
           "CHATROOMS_ALLOW_SQLITE": "1", "DJANGO_STATIC_MANIFEST": "false"}
    with DaphneWorker(env) as worker:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/healthz", timeout=10) as response:
            assert response.status == 200 and json.loads(response.read())["status"] == "ok"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/accounts/login/", timeout=10)
        except urllib.error.HTTPError as error:
            assert error.code == 400  # any other path still checks the Host
        else:
            raise AssertionError("the login page answered an unknown Host")
