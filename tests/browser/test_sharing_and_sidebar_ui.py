"""Sharing a room and keeping the sidebar tidy, in Chromium: members come and go live, pins and archives move rooms."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from chatrooms.models import Membership, Room, RoomPreference
from tests.browser import login_page
from tests.factories import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]
PASSWORD = "a-long-enough-password"


def signed_in(open_page, live_server_url: str, username: str) -> Page:
    page = open_page()
    login_page(page, live_server_url, username, PASSWORD)
    expect(page.get_by_role("status")).to_have_text("connected")
    return page


def make_room(owner, name: str) -> Room:
    """A row only: services.room_create would broadcast through async_to_sync, which Playwright's running
    loop forbids in this process, and no socket is open yet to hear it."""
    return Room.objects.create(owner=owner, name=name)


def room_names(page: Page, list_id: str = "room-list"):
    return page.locator(f"#{list_id} li .room-name")


def test_the_owner_shares_a_room_and_removes_the_member_who_loses_it_at_once(open_page, live_server_url):
    alice, bob = make_user("alice", PASSWORD), make_user("bob", PASSWORD)
    team = make_room(alice, "Team")
    bobs_own = make_room(bob, "Bob's notes")
    owner = signed_in(open_page, live_server_url, "alice")
    member = signed_in(open_page, live_server_url, "bob")
    expect(owner.locator("#room-title")).to_have_text("Team")
    expect(room_names(member)).to_have_text(["Bob's notes"])

    owner.get_by_label("Add a member by username").fill("bob")
    owner.get_by_role("button", name="Add member").click()
    expect(owner.locator("#member-list li")).to_have_text([re.compile(r"alice\s+owner"), re.compile("bob")])
    expect(room_names(member)).to_have_text(["Bob's notes", "Team"])  # live, over bob's socket
    assert Membership.objects.filter(room=team, user=bob).exists()

    member.locator("#room-list a", has_text="Team").click()
    expect(member.locator("#room-title")).to_have_text("Team")
    expect(member.get_by_role("status")).to_have_text("connected")
    expect(member.locator("#member-list li")).to_have_text([re.compile(r"alice\s+owner"), "bob"])
    expect(member.get_by_role("button", name="Add member")).to_have_count(0)

    owner.get_by_role("button", name="Remove bob").click()
    expect(owner.locator("#member-list li")).to_have_count(1)
    # Bob's page was on the room: it leaves for his home, where the room is gone from the sidebar.
    expect(member).to_have_url(re.compile(rf"/rooms/{bobs_own.pk}/$"))
    expect(room_names(member)).to_have_text(["Bob's notes"])
    assert not Membership.objects.filter(room=team).exists()


def test_archive_restore_and_pin_move_rooms_in_the_sidebar_and_a_reload_agrees(open_page, live_server_url):
    sam = make_user("sam", PASSWORD)
    for name in ("Alpha", "Beta", "Gamma"):
        make_room(sam, name)
    page = signed_in(open_page, live_server_url, "sam")
    expect(page.locator("#room-title")).to_have_text("Gamma")
    expect(room_names(page)).to_have_text(["Gamma", "Beta", "Alpha"])
    expect(page.locator("#archived-rooms")).to_be_hidden()

    page.get_by_role("button", name="Archive room").click()
    expect(room_names(page)).to_have_text(["Beta", "Alpha"])
    expect(page.get_by_role("button", name="Restore room")).to_be_focused()
    archived = page.locator("#archived-rooms")
    expect(archived).to_contain_text("Archived (1)")
    page.get_by_text("Archived (1)").click()
    expect(room_names(page, "archived-room-list")).to_have_text(["Gamma"])
    page.reload()
    expect(room_names(page)).to_have_text(["Beta", "Alpha"])
    expect(room_names(page, "archived-room-list")).to_have_text(["Gamma"])

    expect(page.get_by_role("status")).to_have_text("connected")
    page.get_by_text("Archived (1)").click()
    page.get_by_role("button", name="Restore Gamma").click()
    expect(room_names(page)).to_have_text(["Gamma", "Beta", "Alpha"])
    expect(page.locator("#archived-rooms")).to_be_hidden()
    expect(page.get_by_role("button", name="Archive room")).to_be_visible()

    page.locator("#room-list a", has_text="Alpha").click()
    expect(page.locator("#room-title")).to_have_text("Alpha")
    expect(page.get_by_role("status")).to_have_text("connected")
    page.get_by_role("button", name="Pin room").press("Enter")  # the keyboard works too
    expect(room_names(page)).to_have_text(["Alpha", "Gamma", "Beta"])
    expect(page.locator("#room-list li.pinned")).to_have_count(1)
    expect(page.locator("#room-list li.pinned")).to_contain_text("pinned")
    expect(page.get_by_role("button", name="Unpin room")).to_be_visible()
    page.reload()
    expect(room_names(page)).to_have_text(["Alpha", "Gamma", "Beta"])
    expect(page.get_by_role("button", name="Unpin room")).to_be_visible()
    preference = RoomPreference.objects.get(room__name="Alpha")
    assert preference.pinned_at is not None and preference.archived_at is None
    assert RoomPreference.objects.get(room__name="Gamma").archived_at is None
