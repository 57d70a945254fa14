"""The chat page in Chromium: a room, a streamed answer, stop, reload, a second tab, a reconnect."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from chatrooms.models import Message, Room
from chatrooms.scripted_model_server import ScriptedReply
from tests.browser import ARTIFACTS, login_page
from tests.factories import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]
PASSWORD = "a-long-enough-password"
# A fresh worker imports litellm (about 5 s of CPU, in a thread that slows the whole worker) before its
# first answer: on a busy machine, far longer.
FIRST_ANSWER_TIMEOUT_MS = 60_000


def signed_in(open_page, live_server_url: str, username: str = "sam") -> Page:
    page = open_page()
    login_page(page, live_server_url, username, PASSWORD)
    return page


def create_room(page: Page, name: str) -> None:
    page.get_by_label("New room").fill(name)
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#room-title")).to_have_text(name)
    expect(page.get_by_role("status")).to_have_text("connected")


def say(page: Page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def test_a_new_room_streams_an_answer_that_renders_as_markdown_and_survives_a_reload(
    open_page, live_server_url, model_server
):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    create_room(page, "Plans")
    tokens = ["Here ", "is ", "**bold** ", "and ", "code:\n\n", "```python\n", "print('hi')\n", "```\n"]
    model_server.enqueue(ScriptedReply(tokens=tokens, delay=0.15))
    say(page, "Show me")

    streaming = page.locator("article.message.streaming")
    expect(streaming).to_contain_text("Here is", timeout=FIRST_ANSWER_TIMEOUT_MS)  # text arrives before the answer ends
    expect(streaming).to_have_count(0, timeout=15_000)
    answer = page.locator("article.message.assistant").last
    expect(answer.locator("strong")).to_have_text("bold")
    expect(answer.locator("pre code.language-python")).to_contain_text("print('hi')")
    expect(page.locator("#room-list li.current")).to_contain_text("2 msg")
    page.screenshot(path=ARTIFACTS / "chat.png")

    page.reload()
    expect(page.locator("article.message.user")).to_contain_text("Show me")
    expect(page.locator("article.message.assistant strong")).to_have_text("bold")


def test_stop_ends_the_answer_and_keeps_what_streamed(open_page, live_server_url, model_server):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    create_room(page, "Stoppable")
    model_server.enqueue(ScriptedReply(tokens=["Partial ", "answer"], hold_open=True))
    say(page, "Go on forever")
    expect(page.locator("article.message.streaming")).to_contain_text("Partial answer", timeout=FIRST_ANSWER_TIMEOUT_MS)
    page.get_by_role("button", name="Stop").click()
    answer = page.locator("article.message.assistant.status-aborted")
    expect(answer).to_contain_text("Partial answer")
    expect(answer).to_contain_text("aborted")
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    assert model_server.client_disconnected.wait(2)
    assert Message.objects.get(role="assistant").status == "aborted"


def test_a_second_tab_watches_the_same_live_answer(open_page, live_server_url, model_server):
    make_user("sam", PASSWORD)
    first = signed_in(open_page, live_server_url)
    create_room(first, "Shared view")
    second = signed_in(open_page, live_server_url)
    second.goto(first.url)
    expect(second.get_by_role("status")).to_have_text("connected")
    model_server.enqueue(ScriptedReply(tokens=[f"word{i} " for i in range(12)], delay=0.1))
    say(first, "Count")
    expect(second.locator("article.message.streaming")).to_contain_text("word3", timeout=FIRST_ANSWER_TIMEOUT_MS)
    expect(second.locator("article.message.assistant").last).to_contain_text("word11", timeout=15_000)
    expect(second.locator("article.message.streaming")).to_have_count(0)
    expect(second.locator("article.message.user")).to_contain_text("Count")


def test_a_dropped_connection_resumes_the_answer_without_gaps_or_repeats(open_page, live_server_url, model_server):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    create_room(page, "Flaky network")
    words = [f"w{i} " for i in range(30)]
    model_server.enqueue(ScriptedReply(tokens=words, delay=0.1))
    say(page, "Talk")
    expect(page.locator("article.message.streaming")).to_contain_text("w3 ", timeout=FIRST_ANSWER_TIMEOUT_MS)
    page.context.set_offline(True)
    expect(page.get_by_role("status")).not_to_have_text("connected")
    page.context.set_offline(False)
    expect(page.get_by_role("status")).to_have_text("connected", timeout=20_000)
    live = page.locator("article.message.streaming .live-text")
    expect(live).to_contain_text("w15 ", timeout=20_000)
    shown = live.inner_text().strip()
    assert "".join(words).startswith(shown), f"the live text has a gap or a repeat: {shown!r}"
    answer = page.locator("article.message.assistant").last
    expect(answer).to_contain_text("w29", timeout=20_000)
    expect(page.locator("article.message.streaming")).to_have_count(0)
    assert answer.locator(".message-body").inner_text().split("\n")[-1].strip() == "".join(words).strip()


def test_html_in_a_message_shows_as_text(open_page, live_server_url, model_server):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    create_room(page, "<b>not bold</b>")
    say(page, "<img src=x onerror=alert(1)>")
    user_message = page.locator("article.message.user")
    expect(user_message).to_contain_text("<img src=x onerror=alert(1)>", timeout=FIRST_ANSWER_TIMEOUT_MS)
    expect(page.locator("article.message.assistant").last).to_contain_text("Echo: <img", timeout=FIRST_ANSWER_TIMEOUT_MS)
    expect(page.locator("article.message img")).to_have_count(0)
    expect(page.locator("#room-title")).to_have_text("<b>not bold</b>")
    assert dialogs == []


def test_rename_and_delete_from_the_room_settings(open_page, live_server_url, model_server):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    create_room(page, "Before")
    page.get_by_text("Room settings").click()
    page.get_by_label("Name", exact=True).fill("After")
    with page.expect_navigation():  # the form's answer reloads the room page (HX-Redirect)
        page.get_by_role("button", name="Rename").click()
    expect(page.locator("#room-title")).to_have_text("After")
    expect(page.locator("#room-list li.current")).to_contain_text("After")
    page.on("dialog", lambda dialog: dialog.accept())  # the confirm: accepted whenever it shows
    page.get_by_text("Room settings").click()  # closed again by the reload
    page.get_by_role("button", name="Delete room").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.get_by_text("Create a room on the left")).to_be_visible()
    assert not Room.objects.exists()


def test_tool_cards_regenerate_and_edit(open_page, live_server_url, model_server):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    create_room(page, "Tools")
    model_server.enqueue(ScriptedReply(tool_calls=[("roll_dice", '{"sides": 20}')]),
                         ScriptedReply(tokens=["Rolled ", "it."]))
    say(page, "roll a d20")
    card = page.locator("article.message.assistant").last.locator("details.tool-card")
    expect(card).to_contain_text("roll_dice", timeout=FIRST_ANSWER_TIMEOUT_MS)
    expect(page.locator("article.message.streaming")).to_have_count(0)
    card.locator("summary").click()
    expect(card).to_contain_text('"sides": 20')
    expect(card).to_contain_text('"result"')

    model_server.enqueue(ScriptedReply(tokens=["Second ", "try."]))
    page.get_by_role("button", name="Regenerate").click()
    expect(page.locator("article.message.assistant")).to_have_count(1)
    expect(page.locator("article.message.assistant").last).to_contain_text("Second try.", timeout=15_000)

    model_server.enqueue(ScriptedReply(tokens=["Edited ", "answer."]))
    user_message = page.locator("article.message.user").first
    user_message.get_by_role("button", name="Edit").click()
    page.get_by_label("Edit message").fill("roll a d6 instead")
    page.get_by_role("button", name="Save and resend").click()
    expect(page.locator("article.message.user")).to_have_text(re.compile("roll a d6 instead"))
    expect(page.locator("article.message.assistant").last).to_contain_text("Edited answer.", timeout=15_000)
    expect(page.locator("article.message.assistant")).to_have_count(1)
    expect(page.locator("article.message.streaming")).to_have_count(0)  # stream.done: the answer is stored
    assert list(Message.objects.order_by("id").values_list("content", flat=True)) == ["roll a d6 instead", "Edited answer."]


def test_shift_enter_makes_a_new_line_and_enter_sends(open_page, live_server_url, model_server):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    create_room(page, "Lines")
    box = page.get_by_label("Message")
    box.fill("first line")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    expect(page.locator("article.message.user")).to_have_count(0)
    box.press("Enter")
    expect(page.locator("article.message.user")).to_contain_text("second line", timeout=FIRST_ANSWER_TIMEOUT_MS)
    assert Message.objects.get(role="user").content == "first line\nsecond line"


def test_the_page_works_at_375_pixels(open_page, live_server_url, model_server):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    page.set_viewport_size({"width": 375, "height": 740})
    create_room(page, "Phone")
    say(page, "hello from a phone")
    expect(page.locator("article.message.assistant").last).to_contain_text("Echo: hello from a phone", timeout=FIRST_ANSWER_TIMEOUT_MS)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways: {width}px"
    expect(page.get_by_role("button", name="Send")).to_be_in_viewport()
    page.screenshot(path=ARTIFACTS / "chat-375.png")
