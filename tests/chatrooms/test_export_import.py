"""Export a room (Markdown, JSON) and import a JSON export as a new room: the round trip keeps every
message, part, status and time; a bad file is refused and creates nothing."""
from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from chatrooms import selectors, services
from chatrooms.exports import EXPORT_FORMAT, EXPORT_VERSION, export_markdown
from chatrooms.models import Attachment, Message, Room
from chatrooms.services import ActionRefused
from tests.factories import add_member, make_room, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """These tests make many users; the real hasher takes a second for each."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

TOOL_PART = {"type": "tool-roll_dice", "toolCallId": "call-1", "state": "output-available",
             "input": {"sides": 6}, "output": {"result": 4}}


def at(minutes_ago: int):
    return (timezone.now() - timedelta(minutes=minutes_ago)).replace(microsecond=123456)


def add(room: Room, *, role: str, text: str, author=None, parts=None, status: str = "complete", minutes_ago: int = 0):
    message = Message.objects.create(room=room, role=role, author=author, content=text, status=status,
                                     parts=parts if parts is not None else [{"type": "text", "text": text}])
    Message.objects.filter(pk=message.pk).update(created_at=at(minutes_ago))
    return message


def a_full_room(owner, member) -> Room:
    """Every kind of message a room can hold: two authors, tool calls, reasoning, data parts, every
    finished status, an attachment, Unicode, and a live answer that must not be exported."""
    room = make_room(owner, "Trip to Köln 🚆")
    Room.objects.filter(pk=room.pk).update(system_prompt="Answer briefly.", created_at=at(600))
    add_member(room, member)
    question = add(room, role="user", author=owner, text="Plan **day one**", minutes_ago=50,
                   parts=[{"type": "text", "text": "Plan **day one**"},
                          {"type": "file", "mediaType": "text/plain", "filename": "notes.txt", "url": "/attachments/999/"}])
    Attachment.objects.create(room=room, message=question, uploaded_by=owner, filename="notes.txt",
                              media_type="text/plain", size=5, text="Dom\n")
    add(room, role="assistant", text="Rolled a 4. Start at the Dom.", minutes_ago=49, parts=[
        {"type": "step-start"}, {"type": "reasoning", "text": "Use the dice."}, TOOL_PART, {"type": "step-start"},
        {"type": "text", "text": "Rolled a 4. Start at the Dom."},
        {"type": "data-usage", "data": {"model": "m", "inputTokens": 3, "outputTokens": 5, "totalTokens": 8}},
    ])
    add(room, role="user", author=member, text="And day two? `code` ```fence```", minutes_ago=40)
    add(room, role="assistant", text="Half an ans", status="aborted", minutes_ago=39)
    add(room, role="assistant", text="", status="error", minutes_ago=30,
        parts=[{"type": "tool-get_weather", "toolCallId": "call-2", "state": "output-error", "input": {},
                "errorText": "no network"}])
    add(room, role="assistant", text="Cut off", status="interrupted", minutes_ago=20)
    add(room, role="assistant", text="still typing", status="streaming", minutes_ago=0)
    return room


def comparable(message: Message) -> tuple:
    return message.role, message.content, message.parts, message.status, message.created_at


def upload(data, name: str = "export.json") -> SimpleUploadedFile:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return SimpleUploadedFile(name, raw, content_type="application/json")


@pytest.fixture
def alice(client):
    user = make_user("alice")
    client.force_login(user)
    return user


@pytest.fixture
def two_models(settings):
    """This server offers two models; the rooms of these tests use the one that is not the default,
    so an import that drops a room's model shows."""
    settings.LLM_MODEL = "openai/scripted"
    settings.LLM_MODELS = ["openai/scripted=Scripted", "openai/other=Other"]
    return "openai/other"


def test_export_then_import_equals_the_original(client, alice, two_models):
    bob = make_user("bob")
    original = a_full_room(alice, bob)
    services.room_configure(user=alice, room_id=original.pk, model=two_models)
    client.force_login(bob)  # a member may export, and imports into a room of their own
    exported = client.get(f"/rooms/{original.pk}/export.json")
    assert exported.status_code == 200 and exported["Content-Type"].startswith("application/json")

    answer = client.post("/rooms/import/", {"file": upload(exported.content)})

    copy = Room.objects.exclude(pk=original.pk).get()
    assert answer.status_code == 302 and answer["Location"] == f"/rooms/{copy.pk}/"
    original.refresh_from_db()
    assert (copy.owner, copy.name, copy.model, copy.system_prompt, copy.created_at) == (
        bob, "Trip to Köln 🚆", "openai/other", "Answer briefly.", original.created_at)
    assert (original.name, original.model, original.system_prompt) == (copy.name, copy.model, copy.system_prompt)
    before = list(Message.objects.filter(room=original).exclude(status="streaming").order_by("id"))
    after = list(Message.objects.filter(room=copy).order_by("id"))
    new_attachment = Attachment.objects.get(room=copy)
    # The file part now links to the imported copy of the file; everything else is as it was.
    assert after[0].parts[1]["url"] == f"/attachments/{new_attachment.pk}/"
    after[0].parts[1]["url"] = before[0].parts[1]["url"]
    assert [comparable(m) for m in after] == [comparable(m) for m in before]
    assert {m.author for m in after if m.role == "user"} == {bob}, "user messages are the importer's"
    assert all(m.author is None for m in after if m.role == "assistant")
    assert (new_attachment.message, new_attachment.filename, new_attachment.media_type, new_attachment.text,
            new_attachment.size) == (after[0], "notes.txt", "text/plain", "Dom\n", 4)


def test_the_json_export_holds_the_room_and_every_finished_message(alice):
    room = a_full_room(alice, make_user("bob"))
    document = selectors.room_export_for_user(user=alice, room_id=room.pk)
    assert (document["format"], document["version"]) == (EXPORT_FORMAT, EXPORT_VERSION)
    assert document["room"]["name"] == "Trip to Köln 🚆" and document["room"]["systemPrompt"] == "Answer briefly."
    assert [m["status"] for m in document["messages"]] == [
        "complete", "complete", "complete", "aborted", "error", "interrupted"]
    assert [m["author"] for m in document["messages"]] == ["alice", None, "bob", None, None, None]
    assert document["messages"][0]["attachments"] == [{"filename": "notes.txt", "mediaType": "text/plain",
                                                       "text": "Dom\n"}]
    assert "attachments" not in document["messages"][1]
    assert document["messages"][1]["parts"][2] == TOOL_PART


def test_an_export_takes_three_queries(alice, django_assert_num_queries):
    room = a_full_room(alice, make_user("bob"))
    with django_assert_num_queries(3):  # the room, its messages, their attachments
        selectors.room_export_for_user(user=alice, room_id=room.pk)


def test_the_markdown_export_is_a_readable_copy(client, alice):
    room = a_full_room(alice, make_user("bob"))
    response = client.get(f"/rooms/{room.pk}/export.md")
    assert response.status_code == 200 and response["Content-Type"] == "text/markdown; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="trip-to-koln.md"'
    text = response.content.decode()
    assert text.startswith("# Trip to Köln 🚆\n")
    assert "> Answer briefly." in text
    assert re.search(r"^## alice \(user\) · \d{4}-\d\d-\d\d \d\d:\d\d UTC$", text, re.MULTILINE)
    assert "Plan **day one**" in text and "- Attachment: `notes.txt` (text/plain)" in text
    assert '- Tool call `roll_dice` (output-available), input `{"sides": 6}`, output `{"result": 4}`' in text
    assert "- Tool call `get_weather` (output-error), input `{}`, error: no network" in text
    assert "> Use the dice." in text
    assert re.search(r"^## Assistant \(assistant\) · .* UTC · aborted$", text, re.MULTILINE)
    assert "*Status: aborted. Stopped before it finished.*" in text
    assert "*Status: interrupted." in text and "*Status: error. The model call failed.*" in text
    assert "## bob (user)" in text and "And day two? `code` ```fence```" in text
    assert "still typing" not in text


def test_export_filenames_are_safe_whatever_the_room_is_called(client, alice):
    for name, expected in (('../../etc/passwd "x"; rm -rf', "etcpasswd-x-rm-rf"), ("🚆🚆", "room"),
                           ("Ünïcödé  name", "unicode-name")):
        room = make_room(alice, name)
        header = client.get(f"/rooms/{room.pk}/export.json")["Content-Disposition"]
        assert header == f'attachment; filename="{expected}.json"'


def test_a_stranger_cannot_export(client, alice):
    room = make_room(make_user("bob"), "Bob's")
    add(room, role="user", text="secret", author=room.owner)
    for extension in ("md", "json"):
        assert client.get(f"/rooms/{room.pk}/export.{extension}").status_code == 404
    assert client.get("/rooms/999999/export.json").status_code == 404


def test_export_and_import_need_a_login(client):
    room = make_room(make_user("bob"), "Bob's")
    assert client.get(f"/rooms/{room.pk}/export.json").status_code == 302
    assert client.post("/rooms/import/", {"file": upload({})}).status_code == 302


def test_the_room_page_links_to_its_exports_and_offers_an_import(client, alice):
    assert 'action="/rooms/import/"' in client.get("/").content.decode(), "the app page without rooms too"
    room = make_room(alice, "Plans")
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    assert f'href="/rooms/{room.pk}/export.md"' in page and f'href="/rooms/{room.pk}/export.json"' in page
    assert 'action="/rooms/import/"' in page and 'enctype="multipart/form-data"' in page


def good_export() -> dict:
    return {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exportedAt": "2025-01-02T10:00:00Z",
        "room": {"name": "Imported", "model": "", "systemPrompt": "", "createdAt": "2025-01-01T09:00:00Z"},
        "messages": [
            {"role": "user", "author": "zed", "content": "hi", "parts": [{"type": "text", "text": "hi"}],
             "status": "complete", "createdAt": "2025-01-01T09:01:00Z"},
            {"role": "assistant", "author": None, "content": "hello", "parts": [{"type": "text", "text": "hello"}],
             "status": "complete", "createdAt": "2025-01-01T09:01:05Z"},
        ],
    }


def broken(change) -> dict:
    document = good_export()
    change(document)
    return document


BAD_FILES = {
    "not JSON": (b"this is not json", "not a JSON export"),
    "not UTF-8": (b"\xff\xfe\x00{", "not a JSON export"),
    "NaN is not JSON": (b'{"format": NaN}', "not a JSON export"),
    "a list": ([good_export()], "must hold a JSON object"),
    "no format marker": (broken(lambda d: d.pop("format")), "not a room export"),
    "another format": (broken(lambda d: d.update(format="something-else")), "not a room export"),
    "a newer version": (broken(lambda d: d.update(version=2)), "Unsupported export version 2"),
    "a version as text": (broken(lambda d: d.update(version="1")), "Unsupported export version '1'"),
    "no room": (broken(lambda d: d.pop("room")), "`room` must be an object"),
    "an empty name": (broken(lambda d: d["room"].update(name="  ")), "`room.name` must be 1 to 100"),
    "a long name": (broken(lambda d: d["room"].update(name="x" * 101)), "`room.name` must be 1 to 100"),
    "a bad room time": (broken(lambda d: d["room"].update(createdAt="yesterday")), "`room.createdAt` must be"),
    "an impossible time": (broken(lambda d: d["room"].update(createdAt="2025-13-45T10:00:00Z")), "`room.createdAt`"),
    "messages not a list": (broken(lambda d: d.update(messages={"0": {}})), "`messages` must be a list"),
    "a message not an object": (broken(lambda d: d["messages"].append("hi")), "`messages[2]` must be an object"),
    "an unknown role": (broken(lambda d: d["messages"][1].update(role="system")), "`messages[1].role` must be"),
    "an unknown status": (broken(lambda d: d["messages"][1].update(status="done")), "`messages[1].status` must be"),
    "a streaming message": (broken(lambda d: d["messages"][1].update(status="streaming")), "still streaming"),
    "content not text": (broken(lambda d: d["messages"][0].update(content=5)), "`messages[0].content` must be a string"),
    "parts not a list": (broken(lambda d: d["messages"][0].update(parts="hi")), "`messages[0].parts` must be a list"),
    "a part without a type": (broken(lambda d: d["messages"][0]["parts"].append({})), "`messages[0].parts[1].type`"),
    "a text part without text": (broken(lambda d: d["messages"][0]["parts"].append({"type": "text"})),
                                 "`messages[0].parts[1].text` must be a string"),
    "a tool part without a call id": (broken(lambda d: d["messages"][1]["parts"].append({"type": "tool-x"})),
                                      "`messages[1].parts[1].toolCallId` must be a string"),
    "a bad message time": (broken(lambda d: d["messages"][0].update(createdAt=None)), "`messages[0].createdAt`"),
    "a bad attachment": (broken(lambda d: d["messages"][0].update(attachments=[{"filename": "a.txt"}])),
                         "`messages[0].attachments[0].mediaType` must be a string"),
    "a NUL character": (broken(lambda d: d["messages"][0].update(content="a\x00b")), "NUL character"),
}


def with_file_url(url) -> dict:
    def change(document):
        document["messages"][0]["parts"].append(
            {"type": "file", "mediaType": "text/plain", "filename": "notes.txt", "url": url})
    return broken(change)


def with_source_url(url) -> dict:
    return broken(lambda d: d["messages"][1]["parts"].append({"type": "source-url", "sourceId": "s1", "url": url}))


FILE_URL_REFUSED = "`messages[0].parts[1].url` must be a link to one of the room's attachments (/attachments/"
SOURCE_URL_REFUSED = "`messages[1].parts[1].url` must be an http or https link"
BAD_FILES |= {
    f"a file part linking to {url!r}": (with_file_url(url), FILE_URL_REFUSED)
    for url in ["javascript:alert(document.cookie)", "JavaScript:alert(1)", "data:text/html,<script>alert(1)</script>",
                "http://evil.example/attachments/1/", "//evil.example/attachments/1/", "/attachments/1/\n",
                "/attachments/1/../../admin/", "/attachments/x/", "/attachments/\u0661/", "/rooms/1/", "", 5, None]
} | {
    f"a source part linking to {url!r}": (with_source_url(url), SOURCE_URL_REFUSED)
    for url in ["javascript:alert(1)", "data:text/html,x", "vbscript:x", "/relative", "https://", 5]
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_is_refused_with_a_clear_message_and_creates_nothing(client, alice, case):
    data, reason = BAD_FILES[case]
    response = client.post("/rooms/import/", {"file": upload(data)})
    assert response.status_code == 400
    shown = response.content.decode().replace("&#x27;", "'").replace("&quot;", '"').replace("&lt;", "<")
    assert reason in shown, shown[shown.find("errorlist"):][:300]
    assert (Room.objects.count(), Message.objects.count(), Attachment.objects.count()) == (0, 0, 0)


def test_a_file_over_the_size_limit_or_no_file_is_refused(client, alice, settings):
    settings.IMPORT_MAX_BYTES = 100
    response = client.post("/rooms/import/", {"file": upload(good_export())})
    assert response.status_code == 400 and "an import may be at most 100 bytes" in response.content.decode()
    response = client.post("/rooms/import/", {})
    assert response.status_code == 400 and "Choose a JSON export file" in response.content.decode()
    assert Room.objects.count() == 0


def test_the_good_file_of_those_tests_imports(client, alice):
    response = client.post("/rooms/import/", {"file": upload(good_export())})
    room = Room.objects.get()
    assert response.status_code == 302 and room.owner == alice and room.name == "Imported"
    assert [(m.role, m.author, m.content) for m in room.messages.order_by("id")] == [
        ("user", alice, "hi"), ("assistant", None, "hello")]
    assert room.model, "a blank or unknown model becomes this server's default"


def test_imports_count_against_the_rooms_a_user_may_make_in_an_hour(client, alice, settings):
    settings.ROOMS_PER_HOUR = 2
    assert client.post("/rooms/new/", {"name": "Made"}).status_code in (200, 302)
    assert client.post("/rooms/import/", {"file": upload(good_export())}).status_code == 302
    response = client.post("/rooms/import/", {"file": upload(good_export())})
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    assert "new rooms" in response.content.decode() and Room.objects.count() == 2


def test_an_import_fails_whole_or_not_at_all(alice, monkeypatch):
    def broken_attachments(**kwargs):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(services, "_import_attachments", broken_attachments)
    with pytest.raises(RuntimeError):
        services.room_import(user=alice, data=good_export())
    assert (Room.objects.count(), Message.objects.count()) == (0, 0)


def test_an_import_beyond_the_room_limit_is_refused(alice, settings):
    settings.ROOM_MAX_MESSAGES = 1
    with pytest.raises(ActionRefused) as refused:
        services.room_import(user=alice, data=good_export())
    assert "at most 1" in refused.value.message and Room.objects.count() == 0


def test_the_import_page_works_without_javascript(client, alice):
    page = client.get("/rooms/import/").content.decode()
    assert "<html" in page and 'type="file"' in page


def test_markdown_of_an_empty_room():
    document = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exportedAt": "2025-01-02T10:00:00Z",
                "room": {"name": "Empty", "model": "", "systemPrompt": "", "createdAt": "2025-01-01T09:00:00Z"},
                "messages": []}
    assert export_markdown(document) == (
        "# Empty\n\n- Model: the default\n- Created: 2025-01-01 09:00 UTC\n- Exported: 2025-01-02 10:00 UTC\n"
        "- Messages: 0\n")


def test_imported_urls_are_only_those_the_app_makes(client, alice):
    """A file part keeps a link only to the imported copy of its file; a source part its web link."""
    document = good_export()
    document["messages"][0]["parts"] += [
        {"type": "file", "mediaType": "text/plain", "filename": "notes.txt", "url": "/attachments/7/"},
        {"type": "file", "mediaType": "text/plain", "filename": "gone.txt", "url": "/attachments/8/"},
    ]
    document["messages"][0]["attachments"] = [{"filename": "notes.txt", "mediaType": "text/plain", "text": "hi"}]
    document["messages"][1]["parts"].append({"type": "source-url", "sourceId": "s1", "url": "https://example.org/a"})
    # A message without attachments whose file part names another server's file.
    document["messages"].append({"role": "user", "author": "zed", "content": "again", "status": "complete",
                                 "createdAt": "2025-01-01T09:02:00Z",
                                 "parts": [{"type": "file", "mediaType": "text/plain", "filename": "x.txt",
                                            "url": "/attachments/1/"}]})
    assert client.post("/rooms/import/", {"file": upload(document)}).status_code == 302
    room = Room.objects.get()
    first, answer, last = room.messages.order_by("id")
    copy = Attachment.objects.get(room=room)
    assert first.parts[1] == {"type": "file", "mediaType": "text/plain", "filename": "notes.txt",
                              "url": f"/attachments/{copy.pk}/"}
    assert first.parts[2] == {"type": "file", "mediaType": "text/plain", "filename": "gone.txt"}  # no file: no link
    assert last.parts == [{"type": "file", "mediaType": "text/plain", "filename": "x.txt"}]
    assert answer.parts[1]["url"] == "https://example.org/a"
    page = client.get(f"/rooms/{room.pk}/").content.decode()
    assert f'href="/attachments/{copy.pk}/"' in page and 'href="/attachments/8/"' not in page


def test_a_javascript_url_never_reaches_the_api(client, alice):
    response = client.post("/rooms/import/", {"file": upload(with_file_url("javascript:alert(1)"))})
    assert response.status_code == 400 and "parts[1]" in response.content.decode()
    assert client.get("/api/rooms/").json()["rooms"] == []
    assert "javascript:" not in json.dumps([m.parts for m in Message.objects.all()])
