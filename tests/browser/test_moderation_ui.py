"""Moderation in Chromium: staff act on /moderation/ and in the admin, and a viewer's open room page
follows at once (hidden messages leave it, a locked room stops taking messages)."""
from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from chatrooms.models import AuditLogEntry, Message, Room
from tests.browser import ARTIFACTS, login_page
from tests.factories import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]
PASSWORD = "a-long-enough-password"


def signed_in(open_page, live_server_url: str, username: str) -> Page:
    page = open_page()
    login_page(page, live_server_url, username, PASSWORD)
    return page


def make_staff(username: str = "mod") -> None:
    staff = make_user(username, PASSWORD)
    staff.is_staff = staff.is_superuser = True
    staff.save(update_fields=["is_staff", "is_superuser"])


def room_with_messages(*texts: str) -> tuple[Room, list[Message]]:
    owner = make_user("sam", PASSWORD)
    # Straight to the database: a service would broadcast from this process, on Playwright's running loop.
    room = Room.objects.create(owner=owner, name="Town square")
    messages = [Message.objects.create(room=room, role="user", author=owner, content=text,
                                       parts=[{"type": "text", "text": text}]) for text in texts]
    return room, messages


def viewing(open_page, live_server_url: str, room: Room) -> Page:
    viewer = signed_in(open_page, live_server_url, "sam")
    viewer.goto(f"/rooms/{room.pk}/")
    expect(viewer.get_by_role("status")).to_have_text("connected")
    return viewer


def test_staff_hide_a_message_on_the_moderation_page_and_an_open_room_page_loses_it_live(open_page, live_server_url):
    make_staff()
    room, (kept, rude) = room_with_messages("kind words", "rude words")
    viewer = viewing(open_page, live_server_url, room)
    expect(viewer.locator(f"#message-{rude.pk}")).to_contain_text("rude words")

    moderator = signed_in(open_page, live_server_url, "mod")
    moderator.goto("/moderation/")
    expect(moderator.get_by_role("heading", name="Newest messages")).to_be_visible()
    moderator.get_by_role("button", name=f"Hide message {rude.pk}").click()
    expect(moderator.get_by_role("button", name=f"Unhide message {rude.pk}")).to_be_visible()
    moderator.screenshot(path=ARTIFACTS / "moderation.png")

    expect(viewer.locator(f"#message-{rude.pk}")).to_have_count(0)
    expect(viewer.locator(f"#message-{kept.pk}")).to_contain_text("kind words")
    expect(viewer.locator("#room-list li.current")).to_contain_text("1 msg")
    assert AuditLogEntry.objects.filter(action="message.hide", object_id=str(rude.pk)).count() == 1

    moderator.get_by_role("button", name=f"Unhide message {rude.pk}").click()
    expect(viewer.locator(f"#message-{rude.pk}")).to_contain_text("rude words")
    expect(viewer.locator("#room-list li.current")).to_contain_text("2 msg")


def test_a_room_locked_in_the_admin_stops_taking_messages_on_an_open_page(open_page, live_server_url):
    make_staff()
    room, _ = room_with_messages("hello")
    viewer = viewing(open_page, live_server_url, room)
    composer = viewer.get_by_label("Message")
    expect(composer).to_be_enabled()
    expect(viewer.get_by_text("This room is locked by a moderator")).to_be_hidden()

    moderator = signed_in(open_page, live_server_url, "mod")
    moderator.goto("/admin/chatrooms/room/")
    moderator.locator(f'input[name="_selected_action"][value="{room.pk}"]').check()
    moderator.locator('select[name="action"]').select_option("lock_rooms")
    moderator.get_by_role("button", name="Go").click()
    expect(moderator.get_by_text("Locked 1 room(s).")).to_be_visible()

    expect(viewer.get_by_text("This room is locked by a moderator")).to_be_visible()
    expect(composer).to_be_disabled()
    expect(viewer.get_by_role("button", name="Send")).to_be_disabled()
    viewer.reload()
    expect(viewer.get_by_role("status")).to_have_text("connected")
    expect(viewer.get_by_label("Message")).to_be_disabled()

    moderator.locator(f'input[name="_selected_action"][value="{room.pk}"]').check()
    moderator.locator('select[name="action"]').select_option("unlock_rooms")
    moderator.get_by_role("button", name="Go").click()
    expect(viewer.get_by_text("This room is locked by a moderator")).to_be_hidden()
    expect(viewer.get_by_label("Message")).to_be_enabled()
