"""Search, export and import in Chromium: type in the sidebar's search, open a found message in its
room; download a room as JSON and Markdown, and import the JSON as a new room."""
from __future__ import annotations

import json
import re

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from chatrooms.models import Message, Room, RoomPreference
from tests.browser import ARTIFACTS, login_page
from tests.factories import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]
PASSWORD = "a-long-enough-password"


def signed_in(open_page, live_server_url: str, username: str = "sam") -> Page:
    page = open_page()
    login_page(page, live_server_url, username, PASSWORD)
    expect(page.get_by_role("status")).to_have_text("connected")
    return page


def make_room(owner, name: str) -> Room:
    """A row only: services.room_create would broadcast through async_to_sync, which Playwright's running
    loop forbids in this process."""
    return Room.objects.create(owner=owner, name=name)


def add(room: Room, text: str, *, author=None, role: str = "user", status: str = "complete") -> Message:
    return Message.objects.create(room=room, role=role, author=author, content=text, status=status,
                                  parts=[{"type": "text", "text": text}])


def test_typing_in_the_sidebar_finds_an_old_message_and_the_result_opens_the_room_at_it(open_page, live_server_url):
    sam = make_user("sam", PASSWORD)
    garden = make_room(sam, "Garden")
    notes = [add(garden, f"garden note number {i}", author=sam) for i in range(150)]
    target = notes[30]  # far older than the 50 messages a room page loads
    Message.objects.filter(pk=target.pk).update(content="plant the kumquat tree in spring",
                                                 parts=[{"type": "text", "text": "plant the kumquat tree in spring"}])
    RoomPreference.objects.create(room=garden, user=sam, archived_at=timezone.now())
    make_room(sam, "Kitchen")
    page = signed_in(open_page, live_server_url)
    expect(page.locator("#room-title")).to_have_text("Kitchen")

    box = page.get_by_role("searchbox", name="Search")
    box.press_sequentially("kumqu", delay=30)
    found = page.locator("#search-results .message-hit")
    expect(found).to_have_count(1)
    expect(found).to_contain_text("in Garden")
    expect(found.locator(".badge")).to_have_text("archived")
    expect(found.locator("mark")).to_have_text(re.compile("kumqu", re.IGNORECASE))
    expect(page.locator("#room-list")).to_be_hidden()  # the results stand in for the room list
    page.screenshot(path=ARTIFACTS / "search.png")

    box.fill("")
    expect(page.locator("#room-list")).to_be_visible()
    expect(page.locator("#search-results")).to_be_empty()

    box.press_sequentially("kumquat tree", delay=30)
    expect(found).to_contain_text("plant the kumquat tree")
    found.get_by_role("link").click()

    expect(page).to_have_url(re.compile(rf"/rooms/{garden.pk}/\?around={target.pk}#message-{target.pk}$"))
    landed = page.locator(f"#message-{target.pk}")
    expect(landed).to_contain_text("plant the kumquat tree in spring")
    expect(page.get_by_role("status")).to_have_text("connected")
    expect(landed).to_be_in_viewport()  # and the page did not jump to the end when the socket joined
    expect(page.locator(f"#message-{notes[-1].pk}")).to_have_count(1)
    shown = page.locator("article.message[data-message-id]").evaluate_all("els => els.map(e => e.dataset.messageId)")
    assert len(shown) == len(set(shown)) >= 125, "from a few before it to the newest, none twice"


def test_download_a_room_as_json_and_markdown_and_import_the_json_as_a_new_room(
    open_page, live_server_url, tmp_path
):
    sam = make_user("sam", PASSWORD)
    original = make_room(sam, "Travel notes")
    add(original, "Where should we go?", author=sam)
    add(original, "**Lisbon**, then Porto", role="assistant", status="aborted")
    page = signed_in(open_page, live_server_url)

    with page.expect_download() as json_download:
        page.get_by_role("link", name="JSON", exact=True).click()
    assert json_download.value.suggested_filename == "travel-notes.json"
    exported = tmp_path / "travel-notes.json"
    json_download.value.save_as(exported)
    data = json.loads(exported.read_text())
    assert [(m["role"], m["content"], m["status"]) for m in data["messages"]] == [
        ("user", "Where should we go?", "complete"), ("assistant", "**Lisbon**, then Porto", "aborted")]

    with page.expect_download() as markdown_download:
        page.get_by_role("link", name="Markdown", exact=True).click()
    assert markdown_download.value.suggested_filename == "travel-notes.md"
    markdown = tmp_path / "travel-notes.md"
    markdown_download.value.save_as(markdown)
    assert markdown.read_text().startswith("# Travel notes\n")

    page.get_by_text("Import a room").click()
    page.get_by_label("JSON export file").set_input_files(exported)
    page.get_by_role("button", name="Import", exact=True).click()

    expect(page).not_to_have_url(re.compile(rf"/rooms/{original.pk}/$"))
    expect(page).to_have_url(re.compile(r"/rooms/\d+/$"))
    expect(page.locator("#room-title")).to_have_text("Travel notes")
    expect(page.locator("article.message.user")).to_contain_text("Where should we go?")
    expect(page.locator("article.message.assistant strong")).to_have_text("Lisbon")
    expect(page.locator("article.message.assistant .badge")).to_have_text("aborted")
    expect(page.get_by_role("status")).to_have_text("connected")
    copy = Room.objects.exclude(pk=original.pk).get()
    assert page.url.endswith(f"/rooms/{copy.pk}/")
    assert list(copy.messages.order_by("id").values_list("content", "status")) == [
        ("Where should we go?", "complete"), ("**Lisbon**, then Porto", "aborted")]

    not_an_export = tmp_path / "notes.json"
    not_an_export.write_text('{"format": "something else"}')
    page.get_by_text("Import a room").click()
    page.get_by_label("JSON export file").set_input_files(not_an_export)
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("This is not a room export")
    assert Room.objects.count() == 2
