"""An open socket's login is re-checked: a logout closes that session's sockets at once (4401); a
session that expired, a deactivated user or a changed password is refused at the next frame after
SESSION_RECHECK_SECONDS (`error` `forbidden`, then 4401), and nothing that frame asked for happens."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from chatrooms.models import Room
from tests.chatrooms.test_bad_input import db_state
from tests.conftest import ChatClient
from tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)


class LoggedIn:
    """A browser: an HTTP client with its own session, and sockets opened with that session's cookie."""

    def __init__(self, user: Any) -> None:
        self.http = Client()
        self.http.force_login(user)
        self.session_key = self.http.cookies["sessionid"].value
        self.sockets: list[ChatClient] = []

    async def open_socket(self) -> ChatClient:
        from config.asgi import application

        communicator = WebsocketCommunicator(application, "/ws/chat/", headers=[
            (b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000"),
            (b"cookie", f"sessionid={self.session_key}".encode())])
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        client = ChatClient(communicator)
        self.sockets.append(client)
        assert (await client.receive())["type"] == "hello"
        assert (await client.receive())["type"] == "rooms"
        return client


@pytest.fixture
async def browsers():
    opened: list[LoggedIn] = []

    async def log_in(user: Any) -> LoggedIn:
        browser = await database_sync_to_async(LoggedIn)(user)
        opened.append(browser)
        return browser

    yield log_in
    for browser in opened:
        for socket in browser.sockets:
            try:
                await socket.close()
            except (Exception, BaseException):  # noqa: BLE001  (an app that already stopped)
                pass


async def closed_with(client: ChatClient) -> int:
    output = await client.communicator.receive_output(timeout=10)
    assert output["type"] == "websocket.close", output
    return output["code"]


async def still_serves(client: ChatClient) -> None:
    await client.send({"type": "room.create", "name": "Alive", "ref": "alive"})
    assert (await client.receive_until("room.created"))[-1]["ref"] == "alive"
    await client.receive_until("rooms")  # the room list follows


async def test_logging_out_closes_that_sessions_sockets_and_no_other(browsers):
    alice = await database_sync_to_async(make_user)("alice")
    laptop, phone = await browsers(alice), await browsers(alice)
    tabs = [await laptop.open_socket(), await laptop.open_socket()]
    on_phone = await phone.open_socket()

    response = await database_sync_to_async(laptop.http.post)("/accounts/logout/")
    assert response.status_code == 302
    assert [await closed_with(tab) for tab in tabs] == [4401, 4401]
    await still_serves(on_phone)  # another session of the same user is not logged out
    assert await on_phone.nothing_more()


@pytest.mark.parametrize("how", ["expired", "deleted", "deactivated", "password-changed"])
async def test_a_session_that_ended_is_refused_at_the_next_frame_and_nothing_happens(how, browsers, settings):
    settings.SESSION_RECHECK_SECONDS = 0
    alice = await database_sync_to_async(make_user)("alice")
    browser = await browsers(alice)
    socket = await browser.open_socket()
    await still_serves(socket)

    def end_it() -> None:
        if how == "expired":
            Session.objects.filter(session_key=browser.session_key).update(
                expire_date=timezone.now() - timedelta(seconds=1))
        elif how == "deleted":
            Session.objects.filter(session_key=browser.session_key).delete()
        elif how == "deactivated":
            type(alice).objects.filter(pk=alice.pk).update(is_active=False)
        else:
            alice.set_password("a-brand-new-password")
            alice.save()

    await database_sync_to_async(end_it)()
    before = await database_sync_to_async(db_state)()
    await socket.send({"type": "room.create", "name": "Too late", "ref": "late"})
    error = await socket.receive()
    assert (error["type"], error["code"], error["ref"]) == ("error", "forbidden", "late")
    assert error["message"] == "Your session has ended; log in again."
    assert await closed_with(socket) == 4401
    assert await database_sync_to_async(db_state)() == before
    assert not await database_sync_to_async(Room.objects.filter(name="Too late").exists)()


async def test_a_bad_frame_from_an_ended_session_is_refused_the_same_way(browsers, settings):
    settings.SESSION_RECHECK_SECONDS = 0
    alice = await database_sync_to_async(make_user)("alice")
    browser = await browsers(alice)
    socket = await browser.open_socket()
    await database_sync_to_async(Session.objects.all().delete)()
    await socket.send("not json")
    error = await socket.receive()
    assert (error["type"], error["code"], "ref" in error) == ("error", "forbidden", False)
    assert await closed_with(socket) == 4401


async def test_the_session_is_read_again_only_every_recheck_interval(browsers, settings):
    """Cheap: within SESSION_RECHECK_SECONDS of the last check a frame costs no session read, so a
    session deleted in between is noticed only at the next check (or at once, by a logout)."""
    settings.SESSION_RECHECK_SECONDS = 3600
    alice = await database_sync_to_async(make_user)("alice")
    browser = await browsers(alice)
    socket = await browser.open_socket()
    await database_sync_to_async(Session.objects.all().delete)()
    await still_serves(socket)
    settings.SESSION_RECHECK_SECONDS = 0
    await socket.send({"type": "room.create", "name": "Now", "ref": "now"})
    assert (await socket.receive())["code"] == "forbidden"
