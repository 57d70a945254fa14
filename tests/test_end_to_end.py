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
import websockets.exceptions
from channels.db import database_sync_to_async

from chatrooms.models import Message, Room
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


async def hello_or_close_code(ws) -> str | int:
    try:
        return json.loads(await asyncio.wait_for(ws.recv(), 10))["type"]
    except websockets.ConnectionClosed:
        return ws.close_code


async def test_lone_surrogates_in_a_frame_are_refused_cleanly_and_leak_no_socket(model_server):
    """`"ref": "\\ud800"` sent raw (JSON's escape): echoing it made daphne's UTF-8 encode raise, which ended the
    consumer with 1011 and without disconnect(), leaking the user's socket count until they were locked out.
    Now it is `bad_request` (the ref not echoed), nothing is created, and the socket goes on."""
    from tests.servers import DaphneWorker, scripted_worker_env

    await database_sync_to_async(make_user)("scripter", "a-long-enough-password")
    with DaphneWorker(scripted_worker_env(model_server, SOCKETS_PER_USER="2")) as worker:
        cookie = await database_sync_to_async(log_in)(worker.http_url, "scripter", "a-long-enough-password")
        headers = {"Cookie": cookie, "Origin": worker.http_url}
        for _round in range(3):  # more than SOCKETS_PER_USER: a leak per socket would lock the user out
            async with websockets.connect(worker.ws_url, additional_headers=headers) as ws:
                assert [json.loads(await ws.recv())["type"] for _ in range(2)] == ["hello", "rooms"]
                for raw in ('{"type": "room.create", "name": "Ghost", "ref": "\\ud800"}',
                            '{"type": "room.create", "name": "Gh\\udc00st", "ref": "s1"}',
                            '{"type": "room.create", "name": "Ghost", "ref": "s2", "x\\ud83d": 1}'):
                    await ws.send(raw)
                    error = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert (error["type"], error["code"]) == ("error", "bad_request"), error
                    assert error.get("ref") in (None, "s1", "s2") and "\ud800" not in json.dumps(error)
                await ws.send(json.dumps({"type": "room.create", "name": "Real", "ref": "ok"}))
                assert (await frames_until(ws, "room.created"))[-1]["ref"] == "ok"
            assert ws.close_code == 1000
        # Released: SOCKETS_PER_USER sockets at once (closing is asynchronous on the server: give it a moment).
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            async with websockets.connect(worker.ws_url, additional_headers=headers) as one, \
                    websockets.connect(worker.ws_url, additional_headers=headers) as two:
                got = [await hello_or_close_code(one), await hello_or_close_code(two)]
            if got == ["hello", "hello"] or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert got == ["hello", "hello"]
    rooms = await database_sync_to_async(lambda: sorted(Room.objects.values_list("name", flat=True)))()
    assert rooms == ["Real"] * 3
