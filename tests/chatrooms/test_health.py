"""/healthz: 200 when the database and the channel layer answer, 503 naming what failed."""
from __future__ import annotations

import pytest
from django.test import AsyncClient

from tests.servers import free_port

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
