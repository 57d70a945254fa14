"""Content-Security-Policy (django-csp): every HTML page carries the policy, and no page the app renders holds
what the policy refuses (inline script, inline event handlers, style attributes or elements), so the
policy breaks nothing. tests/browser/test_content_security_policy_ui.py checks the same in Chromium."""
from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from chatrooms.models import Message
from tests.factories import make_room

pytestmark = pytest.mark.django_db

POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data: blob:",
    "connect-src": "'self'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
    "base-uri": "'self'",
    "object-src": "'none'",
}


def policy_of(response) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    directives = [part.strip() for part in header.split(";") if part.strip()]
    return {name: value.strip() for name, _, value in (directive.partition(" ") for directive in directives)}


class InlineCode(HTMLParser):
    """What a strict policy refuses in a page: inline <script>, on* handlers, style attributes, <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        for name, value in attrs:
            if name.startswith("on") or name.startswith("hx-on"):
                self.found.append(f"<{tag} {name}=...>")
            if name == "style":
                self.found.append(f"<{tag} style=...>")
            if name in ("href", "src", "action", "formaction") and (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}=javascript:...>")
        if tag == "style":
            self.found.append("<style>")
        if tag == "script" and "src" not in names and names.get("type") != "application/json":
            self._in_inline_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._in_inline_script:
            self.found.append("inline <script>")
            self._in_inline_script = False


def inline_code_in(page: str) -> list[str]:
    parser = InlineCode()
    parser.feed(page)
    return parser.found


@pytest.fixture
def staff_client() -> tuple[Client, object]:
    user = get_user_model().objects.create_user(username="alice", password="correct-horse-battery",
                                                is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return client, user


def a_room_with_everything(user):
    room = make_room(user, "Everything")
    text = "A table:\n\n| left | middle | right |\n|:--|:-:|--:|\n| 1 | 2 | 3 |\n\n```python\nprint('hi')\n```"
    Message.objects.create(room=room, role="user", author=user, content="hello **there**",
                           parts=[{"type": "text", "text": "hello **there**"}])
    answer = Message.objects.create(
        room=room, role="assistant", content=text,
        parts=[{"type": "step-start"}, {"type": "text", "text": text},
               {"type": "tool-roll_dice", "toolCallId": "c1", "state": "output-available",
                "input": {"sides": 6}, "output": {"result": 4}}])
    return room, answer


def test_every_html_page_carries_the_policy_and_no_inline_code(staff_client):
    client, user = staff_client
    home = client.get("/")  # no room yet: the page that shows how to start
    room, answer = a_room_with_everything(user)
    token_page = client.post("/settings/", {"name": "backup"})  # shows the new token's field
    pages = {
        "/": home,
        f"/rooms/{room.pk}/": client.get(f"/rooms/{room.pk}/"),
        "message partial": client.get(f"/rooms/{room.pk}/messages/{answer.pk}/", HTTP_HX_REQUEST="true"),
        "/settings/ (new token)": token_page,
        "/search/": client.get("/search/", {"q": "hello"}),
        "/rooms/import/": client.get("/rooms/import/"),
        "/moderation/": client.get("/moderation/"),
        "/moderation/streams/": client.get("/moderation/streams/", HTTP_HX_REQUEST="true"),
        "/moderation/messages/": client.get("/moderation/messages/", HTTP_HX_REQUEST="true"),
        "/admin/": client.get("/admin/"),
        "/admin/chatrooms/room/": client.get("/admin/chatrooms/room/"),
        "/admin/chatrooms/room/<id>/change/": client.get(f"/admin/chatrooms/room/{room.pk}/change/"),
        "/admin/auth/user/<id>/change/": client.get(f"/admin/auth/user/{user.pk}/change/"),
        "404": client.get("/no-such-page/"),
    }
    anonymous = Client()
    pages["/accounts/login/"] = anonymous.get("/accounts/login/")
    pages["/accounts/signup/"] = anonymous.get("/accounts/signup/")
    pages["/admin/login/"] = anonymous.get("/admin/login/")
    for number in range(settings.LOGIN_FAILURE_LIMIT):
        locked = anonymous.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    pages["the lockout page"] = locked

    for name, response in pages.items():
        expected_status = {"404": 404, "the lockout page": 429}.get(name, 200)
        assert response.status_code == expected_status, name
        assert response["Content-Type"].startswith("text/html"), name
        assert policy_of(response) == POLICY, name
        assert inline_code_in(response.content.decode()) == [], name


def test_the_room_page_has_its_scripts_as_files_and_htmx_without_inline_styles(staff_client):
    client, user = staff_client
    room, _answer = a_room_with_everything(user)
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    assert "chatrooms/chat.js" in page and "htmx" in page
    assert '"includeIndicatorStyles": false' in page  # htmx's own <style> would be refused
    assert '<th class="align-left">left</th>' in page and '<td class="align-right">3</td>' in page


def test_json_responses_are_not_broken_by_it(staff_client):
    client, user = staff_client
    make_room(user, "One")
    response = client.get("/api/rooms/")
    assert response.status_code == 200 and response.json()["rooms"]


def test_the_parser_finds_what_it_should():
    assert inline_code_in('<script>alert(1)</script>') == ["inline <script>"]
    assert inline_code_in('<script src="/s.js"></script><script type="application/json">{}</script>') == []
    assert inline_code_in('<input onfocus="x()"><p style="a:b"><style>p{}</style><a href="javascript:x">') == [
        "<input onfocus=...>", "<p style=...>", "<style>", "<a href=javascript:...>"]
    assert inline_code_in('<div hx-on:click="x()">') == ["<div hx-on:click=...>"]
