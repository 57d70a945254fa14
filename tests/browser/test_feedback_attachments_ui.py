"""Feedback and text attachments in Chromium: thumbs and a comment that survive a reload, and a
Markdown file attached, sent, shown as a chip and read by the model."""
from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from chatrooms.models import Attachment, Message, MessageFeedback
from chatrooms.scripted_model_server import ScriptedReply
from tests.browser import login_page
from tests.factories import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]
PASSWORD = "a-long-enough-password"
ANSWER_TIMEOUT_MS = 20_000  # a fresh worker imports litellm on its first answer: seconds on a busy machine


def signed_in(open_page, live_server_url: str, username: str = "sam") -> Page:
    page = open_page()
    login_page(page, live_server_url, username, PASSWORD)
    return page


def create_room(page: Page, name: str) -> None:
    page.get_by_label("New room").fill(name)
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#room-title")).to_have_text(name)
    expect(page.locator("#connection")).to_have_text("connected")


def say(page: Page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def answered(page: Page) -> None:
    """Wait for the answer's stream.done: the stored message has replaced the live bubble."""
    expect(page.locator("article.message.assistant[data-message-id]")).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("article.message.streaming")).to_have_count(0)


def test_thumbs_up_with_a_comment_survives_a_reload_and_the_pressed_thumb_takes_it_back(
    open_page, live_server_url, model_server
):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    create_room(page, "Rated")
    model_server.enqueue(ScriptedReply(tokens=["Paris ", "is the capital."]))
    say(page, "Capital of France?")
    answered(page)
    answer = page.locator("article.message.assistant")
    expect(page.locator("article.message.user .feedback")).to_have_count(0)

    good = answer.get_by_role("button", name="Good answer")
    expect(good).to_have_attribute("aria-pressed", "false")
    good.click()
    expect(good).to_have_attribute("aria-pressed", "true")
    expect(answer.get_by_role("button", name="Bad answer")).to_have_attribute("aria-pressed", "false")
    comment = answer.get_by_label("Comment on this answer (optional)")
    comment.fill("Short and right")
    answer.get_by_role("button", name="Save comment").click()
    expect(answer.get_by_label("Comment on this answer (optional)")).to_have_value("Short and right")
    expect(answer.locator('.feedback-comment input[name="comment"][value="Short and right"]')).to_have_count(1)

    page.reload()
    answer = page.locator("article.message.assistant")
    expect(answer.get_by_role("button", name="Good answer")).to_have_attribute("aria-pressed", "true")
    expect(answer.get_by_label("Comment on this answer (optional)")).to_have_value("Short and right")
    feedback = MessageFeedback.objects.get()
    assert (feedback.user.username, feedback.rating, feedback.comment) == ("sam", 1, "Short and right")

    answer.get_by_role("button", name="Good answer").click()
    expect(answer.get_by_role("button", name="Good answer")).to_have_attribute("aria-pressed", "false")
    expect(answer.get_by_label("Comment on this answer (optional)")).to_have_count(0)
    assert not MessageFeedback.objects.exists()


def test_a_markdown_file_is_attached_sent_shown_as_a_chip_and_read_by_the_model(
    open_page, live_server_url, model_server
):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    create_room(page, "Files")
    chips = page.locator("#attachment-chips")

    page.locator("#attach-input").set_input_files(
        files=[{"name": "photo.png", "mimeType": "image/png", "buffer": b"\x89PNG\r\n\x1a\n"}])
    expect(page.locator("#form-error")).to_contain_text("Only text files can be attached")
    expect(chips).to_be_hidden()

    notes = "# Meeting notes\n\n- ship the **beta** on Friday\n"
    expect(page.get_by_role("button", name="Attach file")).to_be_visible()
    page.locator("#attach-input").set_input_files(
        files=[{"name": "notes.md", "mimeType": "text/markdown", "buffer": notes.encode()}])
    chip = chips.locator("li.attachment-chip")
    expect(chip).to_have_count(1)
    expect(chip).to_contain_text("notes.md")
    expect(chip).to_contain_text("B")  # its size, once uploaded
    expect(chip).not_to_have_class("attachment-chip uploading")

    model_server.enqueue(ScriptedReply(tokens=["The beta ", "ships Friday."]))
    say(page, "When does the beta ship?")
    expect(chips).to_be_hidden()
    answered(page)
    link = page.locator("article.message.user a.file-chip")
    expect(link).to_have_text("notes.md")
    attachment = Attachment.objects.get()
    expect(link).to_have_attribute("href", f"/attachments/{attachment.pk}/")
    sent = model_server.requests[-1]["messages"][-1]["content"]
    assert sent.startswith("When does the beta ship?") and notes in sent
    assert attachment.message == Message.objects.get(role="user")

    page.reload()
    expect(page.locator("article.message.user a.file-chip")).to_have_text("notes.md")
    download = page.request.get(f"/attachments/{attachment.pk}/")
    assert download.status == 200 and download.text() == notes
