"""A script's view: log in over HTTP, open the socket with the session cookie, chat, cancel."""
from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import pytest
import websockets
from channels.db import database_sync_to_async

from chatrooms.models import Message
from chatrooms.scripted_model_server import ScriptedReply
from tests.factories import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def log_in(base_url: str, username: str, password: str) -> str:
    """Django's standard login form, as a script would use it; returns the Cookie header."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base_url}/accounts/login/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token})
    request = urllib.request.Request(f"{base_url}/accounts/login/", data=form.encode(),
                                     headers={"Referer": f"{base_url}/accounts/login/"})
    landing = opener.open(request)
    # Home (LOGIN_REDIRECT_URL), or the first room that home redirects to; a refused login shows the form again.
    assert landing.url.startswith(base_url) and urllib.parse.urlsplit(landing.url).path != "/accounts/login/", \
        f"the login form let {username} in (landed on {landing.url})"
    cookies = {cookie.name: cookie.value for cookie in jar}
    assert "sessionid" in cookies
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


async def frames_until(socket, frame_type: str) -> list[dict]:
    frames = []
    while True:
        frame = json.loads(await asyncio.wait_for(socket.recv(), 60))  # a lost frame fails, never hangs
        frames.append(frame)
        if frame["type"] == frame_type:
            return frames


async def test_a_script_logs_in_chats_and_cancels_over_a_real_server(worker, model_server):
    await database_sync_to_async(make_user)("scripter", "a-long-enough-password")
    cookie = await database_sync_to_async(log_in)(worker.http_url, "scripter", "a-long-enough-password")
    async with websockets.connect(worker.ws_url, additional_headers={"Cookie": cookie, "Origin": worker.http_url}) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello" and hello["user"]["username"] == "scripter" and hello["protocol"] == 1
        assert json.loads(await ws.recv())["type"] == "rooms"
        await ws.send(json.dumps({"type": "room.create", "name": "Script"}))
        room_id = (await frames_until(ws, "room.created"))[-1]["room"]["id"]

        model_server.enqueue(ScriptedReply(tokens=["Hi", " from", " the", " model"]))
        await ws.send(json.dumps({"type": "chat.send", "roomId": room_id, "requestId": "r1", "text": "hello"}))
        frames = await frames_until(ws, "stream.done")
        text = "".join(f["chunk"]["delta"] for f in frames
                       if f["type"] == "stream.chunk" and f["chunk"]["type"] == "text-delta")
        assert text == "Hi from the model" == frames[-1]["message"]["content"]
        stored = await database_sync_to_async(Message.objects.get)(pk=int(frames[-1]["message"]["id"]))
        assert stored.content == text and stored.status == "complete"

        model_server.enqueue(ScriptedReply(tokens=["never", " ending"], hold_open=True))
        await ws.send(json.dumps({"type": "chat.send", "requestId": "r2", "text": "keep going"}))
        await frames_until(ws, "stream.chunk")
        await ws.send(json.dumps({"type": "chat.cancel", "requestId": "r2"}))
        done = (await frames_until(ws, "stream.done"))[-1]
        assert done["status"] == "aborted"
        assert await database_sync_to_async(model_server.client_disconnected.wait)(1.0), "the model request was closed"


async def test_the_socket_refuses_anonymous_and_foreign_origin(worker):
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(worker.ws_url, additional_headers={"Origin": worker.http_url}):
            pass
    assert refused.value.response.status_code == 403
    await database_sync_to_async(make_user)("scripter", "a-long-enough-password")
    cookie = await database_sync_to_async(log_in)(worker.http_url, "scripter", "a-long-enough-password")
    with pytest.raises(websockets.exceptions.InvalidStatus) as foreign:
        async with websockets.connect(worker.ws_url, additional_headers={"Cookie": cookie, "Origin": "http://evil.example"}):
            pass
    assert foreign.value.response.status_code == 403
