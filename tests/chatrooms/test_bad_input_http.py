"""Bad input over HTTP, the companion of test_bad_input.py (the socket's table): malformed and oversized
fields, wrong methods, other people's rooms and objects, a deactivated user, a logged-out session, a
form POST without its CSRF token. Each row gets its answer (a 4xx, or the login page), never a 500,
and nothing is written. User strings (room names, messages, system prompts) come back escaped."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from chatrooms import selectors, services
from chatrooms.models import ApiToken, Attachment, MessageFeedback, RoomPreference
from tests.chatrooms.test_bad_input import World, build_world, db_state
from tests.factories import make_user

pytestmark = pytest.mark.django_db

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@dataclass(frozen=True)
class HttpWorld:
    base: World
    bob_token: str  # the id of a token of bob's
    bob_attachment: str  # an unsent upload of bob's in his own room
    sent_attachment: str  # a file bob sent in his own room


@pytest.fixture
def world(settings: Any) -> HttpWorld:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    base = build_world()
    token, _key = services.api_token_create(user=base.bob, name="bob's")
    pending = services.attachment_upload(user=base.bob, room_id=base.foreign, filename="notes.txt", size=5,
                                         read=lambda: b"notes")
    sent = services.attachment_upload(user=base.bob, room_id=base.foreign, filename="sent.txt", size=4,
                                      read=lambda: b"sent")
    # Sent with a message (its answer stays live: nothing runs it here, and no case may touch it).
    services.chat_send(user=base.bob, room_id=base.foreign, request_id="r", text="see file",
                       attachment_ids=[str(sent.pk)])
    return HttpWorld(base, str(token.pk), str(pending.pk), str(sent.pk))


def full_state() -> dict[str, Any]:
    return {
        **db_state(live=True),
        "tokens": list(ApiToken.objects.order_by("pk").values_list("pk", "user_id", "name", "last_used_at")),
        "preferences": list(RoomPreference.objects.order_by("pk").values_list("pk", "pinned_at", "archived_at")),
        "attachments": list(Attachment.objects.order_by("pk").values_list("pk", "message_id", "filename")),
        "feedback": list(MessageFeedback.objects.order_by("pk").values_list("pk", "rating", "comment")),
    }


# -- who is asking -------------------------------------------------------------------------------


def client_for(who: str, w: HttpWorld, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    if who == "anonymous":
        return client
    if who == "deactivated":
        user = make_user("dora")
        client.force_login(user)
        type(user).objects.filter(pk=user.pk).update(is_active=False)
        return client
    if who == "logged-out":
        client.force_login(w.base.alice)
        stale = client.cookies["sessionid"].value
        client.post("/accounts/logout/")
        client.cookies["sessionid"] = stale  # a browser that kept the old cookie
        return client
    client.force_login(w.base.alice)
    if csrf:
        client.get("/", follow=True)  # a page with forms sets the csrftoken cookie; the POST leaves the token out
        assert "csrftoken" in client.cookies
    return client


# -- the table -----------------------------------------------------------------------------------

Url = Callable[[HttpWorld], str]
Data = Callable[[HttpWorld], Any] | None


@dataclass(frozen=True)
class HttpCase:
    id: str
    method: str
    url: Url
    status: int | frozenset[int]
    data: Data = None
    who: str = "alice"
    csrf: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None  # "login" when the answer must be the login page (a redirect to it)

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


def mine(path: str = "") -> Url:
    return lambda w: f"/rooms/{w.base.mine}/{path}"


def foreign(path: str = "") -> Url:
    return lambda w: f"/rooms/{w.base.foreign}/{path}"


def shared(path: str = "") -> Url:
    return lambda w: f"/rooms/{w.base.shared}/{path}"


def missing(path: str = "") -> Url:
    return lambda w: f"/rooms/{w.base.missing}/{path}"


FORM_POSTS: dict[str, tuple[Url, Data]] = {
    "room_create": (lambda w: "/rooms/new/", lambda w: {"name": "Fresh"}),
    "room_rename": (mine("rename/"), lambda w: {"name": "Renamed"}),
    "room_configure": (mine("configure/"), lambda w: {"model": "local/demo", "system_prompt": "New prompt"}),
    "room_clear": (mine("clear/"), lambda w: {}),
    "room_delete": (mine("delete/"), lambda w: {}),
    "room_share": (mine("share/"), lambda w: {"username": "bob"}),
    "room_unshare": (shared("unshare/"), lambda w: {"username": "alice"}),
    "room_pin": (mine("pin/"), lambda w: {"pinned": "true"}),
    "room_archive": (mine("archive/"), lambda w: {"archived": "true"}),
    "feedback": (lambda w: f"/rooms/{w.base.mine}/messages/{w.base.mine_answer}/feedback/",
                 lambda w: {"rating": "up", "comment": "good"}),
    "attachment_upload": (mine("attachments/"), lambda w: {"file": SimpleUploadedFile("a.txt", b"hello")}),
    "token_create": (lambda w: "/settings/", lambda w: {"name": "mine"}),
    "room_import": (lambda w: "/rooms/import/", lambda w: {"file": SimpleUploadedFile("x.json", b"{}")}),
    "logout": (lambda w: "/accounts/logout/", lambda w: {}),
}

CASES = [
    # Malformed and oversized form fields.
    HttpCase("create-name-101", "post", lambda w: "/rooms/new/", 400, lambda w: {"name": "n" * 101}),
    HttpCase("rename-name-missing", "post", mine("rename/"), 400, lambda w: {}),
    HttpCase("rename-name-blank", "post", mine("rename/"), 400, lambda w: {"name": "   "}),
    HttpCase("rename-name-101", "post", mine("rename/"), 400, lambda w: {"name": "n" * 101}),
    HttpCase("configure-model-unknown", "post", mine("configure/"), 400, lambda w: {"model": "openai/nope"}),
    HttpCase("configure-model-missing", "post", mine("configure/"), 400, lambda w: {"system_prompt": "x"}),
    HttpCase("configure-prompt-8001", "post", mine("configure/"), 400,
             lambda w: {"model": "local/demo", "system_prompt": "p" * 8001}),
    HttpCase("share-username-unknown", "post", mine("share/"), 400, lambda w: {"username": "nobody"}),
    HttpCase("share-username-151", "post", mine("share/"), 400, lambda w: {"username": "u" * 151}),
    HttpCase("share-with-oneself", "post", mine("share/"), 400, lambda w: {"username": "alice"}),
    HttpCase("unshare-not-a-member", "post", mine("unshare/"), 400, lambda w: {"username": "bob"}),
    HttpCase("older-before-not-a-number", "get", lambda w: f"/rooms/{w.base.mine}/messages/?before=abc", 400),
    HttpCase("feedback-rating-sideways", "post", lambda w: f"/rooms/{w.base.mine}/messages/{w.base.mine_answer}/feedback/",
             400, lambda w: {"rating": "sideways"}),
    HttpCase("feedback-comment-2001", "post", lambda w: f"/rooms/{w.base.mine}/messages/{w.base.mine_answer}/feedback/",
             400, lambda w: {"rating": "up", "comment": "c" * 2001}),
    HttpCase("feedback-on-a-user-message", "post",
             lambda w: f"/rooms/{w.base.mine}/messages/{w.base.mine_message}/feedback/", 404, lambda w: {"rating": "up"}),
    HttpCase("upload-without-file", "post", mine("attachments/"), 400, lambda w: {}),
    HttpCase("upload-binary-file", "post", mine("attachments/"), 400,
             lambda w: {"file": SimpleUploadedFile("a.png", b"\x89PNG\r\n\x1a\n\x00\x00")}),
    HttpCase("upload-too-large", "post", mine("attachments/"), 413,
             lambda w: {"file": SimpleUploadedFile("big.txt", b"x" * (256 * 1024 + 1))}),
    HttpCase("import-not-json", "post", lambda w: "/rooms/import/", 400,
             lambda w: {"file": SimpleUploadedFile("x.json", b"not json")}),
    HttpCase("import-wrong-shape", "post", lambda w: "/rooms/import/", 400,
             lambda w: {"file": SimpleUploadedFile("x.json", b'{"format": "something-else"}')}),
    HttpCase("import-without-file", "post", lambda w: "/rooms/import/", 400, lambda w: {}),
    HttpCase("token-name-blank", "post", lambda w: "/settings/", 400, lambda w: {"name": "  "}),
    HttpCase("token-name-101", "post", lambda w: "/settings/", 400, lambda w: {"name": "t" * 101}),
    HttpCase("api-limit-not-a-number", "get", lambda w: f"/api/rooms/{w.base.mine}/messages/?limit=lots", 400),
    HttpCase("api-bad-token", "get", lambda w: "/api/rooms/", 401, who="anonymous",
             headers={"Authorization": "Bearer crt_forged"}),
    # Wrong methods.
    HttpCase("get-on-create", "get", lambda w: "/rooms/new/", 405),
    HttpCase("get-on-delete", "get", mine("delete/"), 405),
    HttpCase("put-on-room", "put", mine(), 405),
    HttpCase("post-on-api", "post", lambda w: "/api/rooms/", 405),
    HttpCase("delete-a-sent-attachment", "delete", lambda w: f"/attachments/{w.sent_attachment}/", 404),
    # Rooms and objects that are not alice's: not found (as if they did not exist), or forbidden to a member.
    *[HttpCase(f"{where}-{name}", method, room(path), status, data)
      for where, room, status in (("foreign", foreign, 404), ("missing", missing, 404))
      for name, method, path, data in (
          ("page", "get", "", None), ("older", "get", "messages/?before=5", None),
          ("rename", "post", "rename/", lambda w: {"name": "Taken"}),
          ("configure", "post", "configure/", lambda w: {"model": "local/demo", "system_prompt": "x"}),
          ("clear", "post", "clear/", lambda w: {}), ("delete", "post", "delete/", lambda w: {}),
          ("share", "post", "share/", lambda w: {"username": "alice"}),
          ("members", "get", "members/", None), ("pin", "post", "pin/", lambda w: {"pinned": "true"}),
          ("archive", "post", "archive/", lambda w: {"archived": "true"}),
          ("upload", "post", "attachments/", lambda w: {"file": SimpleUploadedFile("a.txt", b"hi")}),
          ("export-md", "get", "export.md", None), ("export-json", "get", "export.json", None),
      )],
    HttpCase("foreign-message", "get", lambda w: f"/rooms/{w.base.foreign}/messages/{w.base.foreign_message}/", 404),
    HttpCase("foreign-message-in-own-room", "get", lambda w: f"/rooms/{w.base.mine}/messages/{w.base.foreign_message}/", 404),
    HttpCase("foreign-feedback", "post", lambda w: f"/rooms/{w.base.mine}/messages/{w.base.foreign_message}/feedback/",
             404, lambda w: {"rating": "up"}),
    HttpCase("foreign-attachment-get", "get", lambda w: f"/attachments/{w.sent_attachment}/", 404),
    HttpCase("foreign-pending-attachment-delete", "delete", lambda w: f"/attachments/{w.bob_attachment}/", 404),
    HttpCase("foreign-token-revoke", "post", lambda w: f"/settings/tokens/{w.bob_token}/revoke/", 404, lambda w: {}),
    HttpCase("foreign-api-room", "get", lambda w: f"/api/rooms/{w.base.foreign}/", 404),
    HttpCase("foreign-api-messages", "get", lambda w: f"/api/rooms/{w.base.foreign}/messages/", 404),
    *[HttpCase(f"member-{name}", "post", shared(path), 403, data) for name, path, data in (
        ("rename", "rename/", lambda w: {"name": "Taken"}),
        ("configure", "configure/", lambda w: {"model": "local/demo", "system_prompt": "x"}),
        ("clear", "clear/", lambda w: {}), ("delete", "delete/", lambda w: {}),
        ("share", "share/", lambda w: {"username": "dora"}),
    )],
    # Nobody logged in: a page sends them to the login form, the API says 401, and nothing is written.
    *[HttpCase(f"{who}-{name}", method, url, status, data, who=who, body=body)
      for who in ("anonymous", "deactivated", "logged-out")
      for name, method, url, status, data, body in (
          ("home", "get", lambda w: "/", 302, None, "login"),
          ("own-room-page", "get", mine(), 302, None, "login"),
          ("create", "post", lambda w: "/rooms/new/", 302, lambda w: {"name": "Sneaky"}, "login"),
          ("rename", "post", mine("rename/"), 302, lambda w: {"name": "Sneaky"}, "login"),
          ("delete", "post", mine("delete/"), 302, lambda w: {}, "login"),
          ("settings", "get", lambda w: "/settings/", 302, None, "login"),
          ("api", "get", lambda w: "/api/rooms/", 401, None, None),
      )],
    # A form POST without its CSRF token is refused before anything happens.
    *[HttpCase(f"csrf-missing-{name}", "post", url, 403, data, csrf=True) for name, (url, data) in FORM_POSTS.items()],
]


@pytest.mark.parametrize("case", [case.param() for case in CASES])
def test_bad_http_request_gets_its_answer_and_writes_nothing(case: HttpCase, world: HttpWorld):
    client = client_for(case.who, world, csrf=case.csrf)
    before = full_state()
    data = case.data(world) if case.data else None
    kwargs: dict[str, Any] = {"headers": case.headers} if case.headers else {}
    if data is not None:
        kwargs["data"] = data
    response = getattr(client, case.method)(case.url(world), **kwargs)
    statuses = {case.status} if isinstance(case.status, int) else set(case.status)
    assert response.status_code in statuses, (response.status_code, response.content[:300])
    if case.body == "login":
        assert response["Location"].startswith("/accounts/login/?next=")
    assert full_state() == before


# -- user strings come back escaped --------------------------------------------------------------


def test_room_names_messages_and_prompts_are_shown_escaped(client, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    alice, bob = make_user("alice"), make_user("bob")
    client.force_login(alice)
    response = client.post("/rooms/new/", {"name": XSS})
    room = selectors.room_get_for_user(user=alice, room_id=response["Location"].rstrip("/").split("/")[-1])
    assert room.name == XSS[:100]
    client.post(f"/rooms/{room.pk}/configure/", {"model": "local/demo", "system_prompt": XSS})
    services.room_share(user=alice, room_id=room.pk, username="bob")
    services.chat_send(user=bob, room_id=room.pk, request_id="x", text=XSS + " **bold**")

    for url in (f"/rooms/{room.pk}/", "/search/?q=script", f"/rooms/{room.pk}/members/"):
        page = client.get(url).content.decode()
        assert "<script>alert" not in page and "<img src=x" not in page, url
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page  # the name and the prompt, as text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page  # the message, as text; its Markdown still works
    assert "<strong>bold</strong>" in page
    question = room.messages.filter(role="user").first()
    partial = client.get(f"/rooms/{room.pk}/messages/{question.pk}/").content.decode()
    assert "<script>alert" not in partial and "&lt;script&gt;" in partial
    export = client.get(f"/rooms/{room.pk}/export.md")
    assert export["Content-Disposition"].startswith("attachment") and export["Content-Type"].startswith("text/markdown")
