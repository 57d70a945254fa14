"""The default run's channel layer: Channels' in-memory delivery, with its sweep for expired entries at most once a second."""
from __future__ import annotations

import pytest
from django.conf import settings

from streaming.layers import OneProcessChannelLayer


def test_the_default_run_uses_it():
    if getattr(settings, "REDIS_URL", ""):
        pytest.skip("REDIS_URL is set: the layer is channels-redis's")
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "streaming.layers.OneProcessChannelLayer"


async def test_every_member_of_a_group_gets_its_own_copy():
    layer = OneProcessChannelLayer()
    first, second = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", first)
    await layer.group_add("room", second)
    await layer.group_send("room", {"type": "chunk", "parts": ["a"]})
    got_first, got_second = await layer.receive(first), await layer.receive(second)
    assert got_first == got_second == {"type": "chunk", "parts": ["a"]}
    got_first["parts"].append("changed by one consumer")
    assert got_second["parts"] == ["a"]


async def test_a_full_queue_drops_the_message_for_that_member_only():
    layer = OneProcessChannelLayer(capacity=1)
    slow, fast = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", slow)
    await layer.group_add("room", fast)
    await layer.group_send("room", {"type": "chunk", "n": 1})
    assert await layer.receive(fast) == {"type": "chunk", "n": 1}
    await layer.group_send("room", {"type": "chunk", "n": 2})  # slow's queue is full: no error
    assert await layer.receive(fast) == {"type": "chunk", "n": 2}
    assert await layer.receive(slow) == {"type": "chunk", "n": 1}
    assert layer.channels.get(slow) is None  # n=2 never reached it


async def test_expired_entries_are_swept_but_not_on_every_message(monkeypatch):
    clock = [1000.0]  # the sweep's clock, moved by hand
    monkeypatch.setattr("streaming.layers.time.monotonic", lambda: clock[0])
    layer = OneProcessChannelLayer(expiry=-1)  # every message is expired as soon as it is sent
    gone = await layer.new_channel()
    await layer.group_add("room", gone)
    await layer.send(gone, {"type": "stale"})
    await layer.group_send("elsewhere", {"type": "x"})  # the first message sweeps
    assert gone not in layer.channels and not layer.groups.get("room")  # an expired message ends its channel's groups

    kept = await layer.new_channel()
    await layer.group_add("room", kept)
    await layer.send(kept, {"type": "stale too"})
    clock[0] += 0.9
    await layer.group_send("elsewhere", {"type": "x"})  # within the second: no sweep
    assert kept in layer.channels and kept in layer.groups["room"]
    clock[0] += 0.1  # a second after the last sweep
    await layer.group_send("elsewhere", {"type": "x"})
    assert kept not in layer.channels and not layer.groups.get("room")
