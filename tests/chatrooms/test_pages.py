"""The server-rendered pages: rooms and history without JavaScript, htmx forms, safe Markdown."""
from __future__ import annotations

import pytest

from chatrooms.models import Message, Room
from chatrooms.rendering import markdown_to_html
from tests.factories import add_member, make_room, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(client):
    user = make_user("alice")
    client.force_login(user)
    return user


def add_exchange(room, author, text: str, answer: str) -> None:
    Message.objects.create(room=room, role="user", author=author, content=text, parts=[{"type": "text", "text": text}])
    Message.objects.create(room=room, role="assistant", content=answer,
                           parts=[{"type": "step-start"}, {"type": "text", "text": answer},
                                  {"type": "tool-roll_dice", "toolCallId": "c1", "state": "output-available",
                                   "input": {"sides": 6}, "output": {"result": 4}}])


def test_home_goes_to_the_most_recent_room_or_shows_how_to_start(client, alice):
    page = client.get("/").content.decode()
    assert "Create a room" in page and 'name="name"' in page
    make_room(alice, "Older")
    newest = make_room(alice, "Newest")
    assert client.get("/").url == f"/rooms/{newest.pk}/"


def test_a_room_page_shows_the_history_rendered_and_safe_without_javascript(client, alice):
    room = make_room(alice, "Docs")
    add_exchange(room, alice, "<img src=x onerror=alert(1)> and **bold**", "Here:\n\n```python\nprint('hi')\n```")
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img" not in page
    assert "<strong>bold</strong>" in page
    assert '<code class="language-python"><span class="nb">print</span>' in page
    assert 'class="tool-name">roll_dice<' in page and "&quot;result&quot;: 4" in page
    assert f'href="/rooms/{room.pk}/"' in page  # the sidebar is plain links


def test_markdown_keeps_no_script_link_or_handler():
    html = markdown_to_html("[x](javascript:alert(1)) <script>alert(1)</script> ![i](http://e/x.png)")
    assert 'href="javascript:' not in html and "<script" not in html and "<img" not in html
    assert "&lt;script&gt;" in html, "shown as text"


def test_older_messages_load_in_pages(client, alice):
    room = make_room(alice, "Long")
    for i in range(60):
        add_exchange(room, alice, f"question {i}", f"answer {i}")
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    assert "question 59" in page and "question 34" not in page and "Older messages" in page
    first_shown = Message.objects.filter(room=room).order_by("-id")[49].pk
    older = client.get(f"/rooms/{room.pk}/messages/?before={first_shown}", HTTP_HX_REQUEST="true").content.decode()
    assert "question 34" in older and "question 59" not in older and "<html" not in older
    assert client.get(f"/rooms/{room.pk}/messages/?before=abc").status_code == 400


def test_a_message_partial_is_the_server_rendering_of_one_message(client, alice):
    room = make_room(alice, "One")
    add_exchange(room, alice, "hi", "**there**")
    answer = Message.objects.get(role="assistant")
    html = client.get(f"/rooms/{room.pk}/messages/{answer.pk}/").content.decode()
    assert html.strip().startswith("<article") and "<strong>there</strong>" in html


def test_other_peoples_rooms_and_messages_are_404(client, alice):
    bob = make_user("bob")
    room = make_room(bob, "Bob's")
    add_exchange(room, bob, "secret", "reply")
    message = Message.objects.filter(room=room).first()
    for url in (f"/rooms/{room.pk}/", f"/rooms/{room.pk}/messages/{message.pk}/", f"/rooms/{room.pk}/messages/?before=9"):
        assert client.get(url).status_code == 404
    for action in ("rename", "clear", "delete"):
        assert client.post(f"/rooms/{room.pk}/{action}/", {"name": "x"}).status_code == 404
    assert Room.objects.get(pk=room.pk).name == "Bob's" and Message.objects.filter(room=room).count() == 2


def test_room_forms_work_with_htmx_and_without(client, alice):
    response = client.post("/rooms/new/", {"name": "  Plans  "})
    room = Room.objects.get(name="Plans")
    assert response.status_code == 302 and response.url == f"/rooms/{room.pk}/"
    response = client.post(f"/rooms/{room.pk}/rename/", {"name": "Renamed"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response["HX-Redirect"] == f"/rooms/{room.pk}/"
    response = client.post(f"/rooms/{room.pk}/configure/", {"model": "local/demo", "system_prompt": "Be brief."})
    room.refresh_from_db()
    assert (room.name, room.system_prompt) == ("Renamed", "Be brief.")
    assert client.post(f"/rooms/{room.pk}/clear/").status_code == 302
    assert client.post(f"/rooms/{room.pk}/delete/").url == "/"
    assert not Room.objects.filter(pk=room.pk).exists()


@pytest.mark.parametrize("url_name, data, error", [
    ("new", {"name": "x" * 101}, "at most 100"),
    ("configure", {"model": "nope", "system_prompt": ""}, "Select a valid choice"),
    ("configure", {"model": "local/demo", "system_prompt": "x" * 8001}, "at most 8000"),
])
def test_bad_forms_get_a_clear_error_and_change_nothing(client, alice, url_name, data, error):
    room = make_room(alice, "Keep")
    url = "/rooms/new/" if url_name == "new" else f"/rooms/{room.pk}/{url_name}/"
    response = client.post(url, data, HTTP_HX_REQUEST="true")
    assert response.status_code == 400 and error in response.content.decode()
    room.refresh_from_db()
    assert Room.objects.count() == 1 and room.name == "Keep" and room.system_prompt == ""


def test_members_may_read_but_not_manage(client, alice):
    bob = make_user("bob")
    room = make_room(bob, "Shared")
    add_member(room, alice)
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    assert "Shared" in page and "Room settings" not in page
    response = client.post(f"/rooms/{room.pk}/rename/", {"name": "Mine now"})
    assert response.status_code == 403 and "owner" in response.content.decode()
    assert Room.objects.get(pk=room.pk).name == "Shared"


def test_forms_need_a_csrf_token(alice):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert strict.post("/rooms/new/", {"name": "x"}).status_code == 403
    assert not Room.objects.exists()

