"""The built-in offline model: with no configuration and no network, the app answers and uses its tools."""
from __future__ import annotations

import re
import socket

import pytest
from channels.db import database_sync_to_async

from chatrooms.catalog import model_choices
from chatrooms.local_model import plan_reply
from tests.chatrooms.test_chat_flow import joined_room, text_of
from tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def offline(settings, monkeypatch):
    """Default model settings, and any attempt to reach beyond this machine fails the test."""
    settings.LLM_MODEL = ""
    settings.LLM_MODELS = []
    settings.LLM_API_BASE = None
    settings.LLM_API_KEY = None
    settings.LOCAL_MODEL_DELAY_MS = 0
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def guarded_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("::1", "localhost") or host.startswith("/")):
            attempts.append(address)
            raise OSError(f"network access attempted: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    yield attempts
    assert attempts == [], f"the offline model reached for the network: {attempts}"


async def test_default_model_is_the_builtin_one(offline, connect):
    user = await database_sync_to_async(make_user)()
    client = await connect(user)
    assert client.hello["models"] == [{"id": "local/demo", "label": "Built-in demo (offline)"}]
    assert model_choices()[0]["id"] == "local/demo"


async def ask(connect, text: str) -> list[dict]:
    """Every frame of one question to the offline model, up to its stream.done."""
    client = await connect(await database_sync_to_async(make_user)())
    await joined_room(client)
    await client.send({"type": "chat.send", "requestId": "q", "text": text})
    return await client.receive_until("stream.done")


async def test_offline_model_streams_a_useful_answer(offline, connect, settings):
    settings.LOCAL_MODEL_DELAY_MS = 1  # paced (as by default, if faster): deltas of one loop turn are coalesced
    frames = await ask(connect, "What are you?")
    deltas = [f for f in frames if f["type"] == "stream.chunk" and f["chunk"]["type"] == "text-delta"]
    assert len(deltas) > 20, "it streams word by word"
    content = frames[-1]["message"]["content"]
    assert content == text_of(frames)
    assert "LLM_MODEL" in content and "LLM_API_BASE" in content and "What are you?" in content


async def test_offline_model_calls_the_dice_tool(offline, connect):
    frames = await ask(connect, "Please roll a d20")
    chunks = [f["chunk"] for f in frames if f["type"] == "stream.chunk"]
    call = next(c for c in chunks if c["type"] == "tool-input-available")
    assert (call["toolName"], call["input"]) == ("roll_dice", {"sides": 20})
    result = next(c for c in chunks if c["type"] == "tool-output-available")["output"]["result"]
    assert frames[-1]["message"]["content"] == f"🎲 You rolled a **{result}** on a d20."


async def test_offline_model_tells_the_time_with_its_tool(offline, connect):
    frames = await ask(connect, "what time is it?")
    chunks = [f["chunk"] for f in frames if f["type"] == "stream.chunk"]
    assert next(c for c in chunks if c["type"] == "tool-input-available")["toolName"] == "get_current_time"
    assert re.match(r"It is \*\*\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\*\* \(UTC\), a \w+day\.", frames[-1]["message"]["content"])


def test_plan_reply_is_deterministic_and_only_uses_offered_tools():
    messages = [{"role": "user", "content": "roll the dice"}]
    assert plan_reply(messages, {"roll_dice"}) == ("", {"name": "roll_dice", "arguments": {"sides": 6}})
    text, call = plan_reply(messages, set())
    assert call is None and "roll the dice" in text


def test_importing_and_configuring_litellm_makes_no_network_call():
    """In a fresh process, so that the import itself is watched."""
    import subprocess
    import sys
    from pathlib import Path

    probe = (
        "import socket\n"
        "attempts = []\n"
        "real = socket.socket.connect\n"
        "def guard(sock, address):\n"
        "    host = address[0] if isinstance(address, tuple) else address\n"
        "    if isinstance(host, str) and not (host.startswith('127.') or host in ('::1', 'localhost') or host.startswith('/')):\n"
        "        attempts.append(address)\n"
        "        raise OSError('network access attempted')\n"
        "    return real(sock, address)\n"
        "socket.socket.connect = guard\n"
        "real_getaddrinfo = socket.getaddrinfo\n"
        "def lookup(host, *args, **kwargs):\n"
        "    if host not in (None, 'localhost') and not str(host).startswith('127.'):\n"
        "        attempts.append(host)\n"
        "    return real_getaddrinfo(host, *args, **kwargs)\n"
        "socket.getaddrinfo = lookup\n"
        "import django, os\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings')\n"
        "django.setup()\n"
        "from chatrooms.llm import get_litellm\n"
        "get_litellm()\n"
        "print('attempts:', attempts)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in __import__("os").environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip().splitlines()[-1] == "attempts: []"


async def test_offline_model_asks_to_rename_the_room_and_reads_the_browsers_time(offline, connect):
    client = await connect(await database_sync_to_async(make_user)())
    room_id = await joined_room(client)
    await client.send({"type": "chat.send", "requestId": "q", "text": "Please rename this room to Trip to Lyon"})
    frames = await client.receive_until("message.updated")
    request = next(f["chunk"] for f in frames if f["type"] == "stream.chunk"
                   and f["chunk"]["type"] == "tool-approval-request")
    await client.send({"type": "tool.approval", "requestId": "q", "toolCallId": request["toolCallId"], "approved": True})
    done = (await client.receive_until("stream.done"))[-1]
    assert done["message"]["content"] == "Done: this room is now called **Trip to Lyon**."
    assert (await client.receive_until("rooms"))[-1]["rooms"][0]["name"] == "Trip to Lyon"
    usage = next(p for p in done["message"]["parts"] if p["type"] == "data-usage")
    assert usage["data"]["model"] == "local/demo" and usage["data"]["totalTokens"] > 0

    await client.send({"type": "chat.send", "roomId": room_id, "requestId": "q2", "text": "What's my local time?"})
    frames = await client.receive_until("message.updated")
    call = next(f["chunk"] for f in frames if f["type"] == "stream.chunk" and f["chunk"]["type"] == "tool-input-available")
    assert call["toolName"] == "get_local_time"
    await client.send({"type": "tool.result", "requestId": "q2", "toolCallId": call["toolCallId"],
                       "output": {"localTime": "2026-11-26T22:00:00+01:00", "timeZone": "Europe/Paris"}})
    done = (await client.receive_until("stream.done"))[-1]
    assert done["message"]["content"] == "Your browser says it is **2026-11-26T22:00:00+01:00** (Europe/Paris)."
