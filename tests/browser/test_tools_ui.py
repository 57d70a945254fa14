"""Tools in Chromium: approving and denying a call, the browser answering a client tool, progress,
data parts, the usage line and reasoning, live and after a reload."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from chatrooms.models import Message, Room
from chatrooms.scripted_model_server import ScriptedReply
from tests.browser import ARTIFACTS, login_page
from tests.browser.ui_tools import GATE_ENV
from tests.factories import make_user
from tests.servers import DaphneWorker, scripted_worker_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]
PASSWORD = "a-long-enough-password"
# A fresh worker imports litellm (about 5 s of CPU) before its first answer: on a busy machine, far longer.
ANSWER_TIMEOUT_MS = 60_000
TIME_ZONE = "Asia/Tehran"  # +03:30: not the machine's zone, and not a whole number of hours


@pytest.fixture
def tools_gate(tmp_path: Path) -> Path:
    """The file that lets ui_tools.count_in_stages go on past its first stage."""
    return tmp_path / "gate"


@pytest.fixture
def worker(model_server, tools_gate) -> DaphneWorker:
    """The conftest worker, with tests/browser/ui_tools.py's tools registered too."""
    model_server.reset()
    server = DaphneWorker(scripted_worker_env(
        model_server, TOOL_MODULES="tests.browser.ui_tools", **{GATE_ENV: str(tools_gate)})).start()
    yield server
    server.stop()
    print(server.output())  # shown by pytest when the test fails


def signed_in(open_page, live_server_url: str, username: str = "sam", refusals: list[dict[str, Any]] | None = None,
              **context_options: Any) -> Page:
    """A signed-in page; `refusals` collects the `not_found` errors its sockets receive."""
    page = open_page(**context_options)
    if refusals is not None:
        page.on("websocket", lambda socket: socket.on("framereceived", lambda payload: (
            '"not_found"' in payload and refusals.append(json.loads(payload)))))
    login_page(page, live_server_url, username, PASSWORD)
    return page


def connected(page: Page) -> None:
    expect(page.locator("#connection")).to_have_text("connected", timeout=ANSWER_TIMEOUT_MS)


def create_room(page: Page, name: str) -> None:
    page.get_by_label("New room").fill(name)
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#room-title")).to_have_text(name)
    connected(page)


def say(page: Page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def approval_prompt(page: Page, tool_name: str = "rename_room") -> Locator:
    return page.get_by_role("group", name=f"Approve {tool_name}?")


def stored_answer(page: Page, text: str) -> Locator:
    """The server's rendering of the answer that says `text`, once the streaming bubble is gone:
    stream.done came, so the message is in the database. (Waiting for "no bubble" alone would pass
    before the bubble appears.)"""
    answer = page.locator("article.message.assistant[data-message-id]").last  # the live bubble has no id
    expect(answer).to_contain_text(text, timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("article.message.streaming")).to_have_count(0)
    return answer


def tool_part(message: Message, name: str) -> dict[str, Any]:
    return next(part for part in message.parts if part["type"] == f"tool-{name}")


def rename_to_trip(model_server) -> None:
    model_server.enqueue(ScriptedReply(tool_calls=[("rename_room", '{"name": "Trip"}')]),
                         ScriptedReply(tokens=["Renamed ", "it."]))


# -- approval ----------------------------------------------------------------------------------


def test_approving_a_rename_with_the_keyboard_renames_the_room_and_the_card_shows_the_output(
    open_page, live_server_url, model_server
):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    create_room(page, "Plans")
    rename_to_trip(model_server)
    say(page, "rename this room to Trip")

    prompt = approval_prompt(page)
    expect(prompt).to_contain_text('rename_room wants to run with {"name":"Trip"}', timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("article.message.streaming .tool-state")).to_have_text("Waiting for approval")
    # Screen readers hold back what changes in a busy region: the waiting answer is not busy.
    expect(page.locator("article.message.streaming")).to_have_attribute("aria-busy", "false")
    assert Room.objects.get().name == "Plans"  # nothing runs before a person says so
    prompt.get_by_role("button", name="Approve").press("Enter")

    expect(page.locator("#room-list li.current .room-name")).to_have_text("Trip", timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#room-title")).to_have_text("Trip")
    answer = stored_answer(page, "Renamed it.")
    expect(approval_prompt(page)).to_have_count(0)
    card = answer.locator("details.tool-card")
    expect(card.locator(".tool-state")).to_have_text("Approved · done")
    expect(card.locator("summary")).to_be_focused()  # focus followed the answer to its card
    page.keyboard.press("Enter")  # opens the focused card
    expect(card.locator(".tool-output")).to_be_visible()
    expect(card.locator(".tool-output")).to_contain_text('"renamed": true')
    expect(card.locator(".tool-output")).to_contain_text('"name": "Trip"')
    assert Room.objects.get().name == "Trip"
    part = tool_part(Message.objects.get(role="assistant"), "rename_room")
    assert part["state"] == "output-available" and part["approval"]["approved"] is True


def test_denying_keeps_the_name_and_the_card_says_denied_at_375_pixels(open_page, live_server_url, model_server):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    page.set_viewport_size({"width": 375, "height": 740})
    create_room(page, "Plans")
    model_server.enqueue(ScriptedReply(tool_calls=[("rename_room", '{"name": "Nope, a much longer name for a phone"}')]),
                         ScriptedReply(tokens=["As ", "you ", "wish."]))
    say(page, "rename this room")

    prompt = approval_prompt(page)
    deny = prompt.get_by_role("button", name="Deny")
    expect(deny).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the approval prompt makes the page scroll sideways: {width}px"
    page.screenshot(path=ARTIFACTS / "approval-375.png")
    deny.click()

    answer = stored_answer(page, "As you wish.")
    card = answer.locator("details.tool-card")
    expect(card.locator(".tool-state")).to_have_text("Denied")
    card.locator("summary").click()
    expect(card.locator(".tool-denied")).to_have_text("Denied: the tool did not run.")
    expect(card.locator(".tool-output")).to_have_count(0)
    expect(page.locator("#room-title")).to_have_text("Plans")
    expect(page.locator("#form-error")).to_be_empty()
    assert Room.objects.get().name == "Plans"
    assert tool_part(Message.objects.get(role="assistant"), "rename_room")["state"] == "output-denied"


def test_a_reload_while_the_approval_waits_shows_it_again_and_approving_then_works(
    open_page, live_server_url, model_server
):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    create_room(page, "Plans")
    rename_to_trip(model_server)
    say(page, "rename this room to Trip")
    expect(approval_prompt(page)).to_be_visible(timeout=ANSWER_TIMEOUT_MS)

    page.reload()
    prompt = approval_prompt(page)
    expect(prompt).to_contain_text('rename_room wants to run with {"name":"Trip"}', timeout=ANSWER_TIMEOUT_MS)  # replayed
    expect(page.locator("article.message.streaming")).to_have_count(1)
    prompt.get_by_role("button", name="Approve").click()

    expect(page.locator("#room-list li.current .room-name")).to_have_text("Trip", timeout=ANSWER_TIMEOUT_MS)
    expect(stored_answer(page, "Renamed it.").locator(".tool-state")).to_have_text("Approved · done")
    assert Room.objects.get().name == "Trip"

    page.reload()  # the server's rendering says the same as the live page did
    answer = page.locator("article.message.assistant").last
    card = answer.locator("details.tool-card")
    expect(card.locator(".tool-state")).to_have_text("Approved · done")
    card.locator("summary").click()
    expect(card.locator(".tool-output")).to_contain_text('"renamed": true')
    expect(answer.locator(".usage")).to_have_text("openai/scripted · 20 in · 2 out")


def test_a_second_tab_can_approve(open_page, live_server_url, model_server):
    make_user("sam", PASSWORD)
    first = signed_in(open_page, live_server_url)
    create_room(first, "Plans")
    second = signed_in(open_page, live_server_url)
    second.goto(first.url)
    connected(second)
    rename_to_trip(model_server)
    say(first, "rename this room to Trip")

    expect(approval_prompt(first)).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    approval_prompt(second).get_by_role("button", name="Approve").click()
    for page in (first, second):
        expect(page.locator("#room-title")).to_have_text("Trip", timeout=ANSWER_TIMEOUT_MS)
        expect(stored_answer(page, "Renamed it.").locator(".tool-state")).to_have_text("Approved · done")
        expect(page.locator("#form-error")).to_be_empty()


# -- client tools ------------------------------------------------------------------------------


def test_the_page_answers_get_local_time_itself_and_a_second_tab_answering_too_shows_no_error(
    open_page, live_server_url, model_server
):
    make_user("sam", PASSWORD)
    refusals: list[dict[str, Any]] = []
    first = signed_in(open_page, live_server_url, refusals=refusals, timezone_id=TIME_ZONE)
    create_room(first, "Clock")
    second = signed_in(open_page, live_server_url, refusals=refusals, timezone_id=TIME_ZONE)
    second.goto(first.url)
    connected(second)
    model_server.enqueue(ScriptedReply(tool_calls=[("get_local_time", "{}")]),
                         ScriptedReply(tokens=["It ", "is ", "late."]))
    say(first, "what time is it for me?")

    for page in (first, second):
        expect(stored_answer(page, "It is late.").locator(".tool-state")).to_have_text("Done")
        expect(page.locator("#form-error")).to_be_empty()
    browser_zone, offset = first.evaluate(
        "[Intl.DateTimeFormat().resolvedOptions().timeZone, -new Date().getTimezoneOffset()]")
    assert browser_zone == TIME_ZONE and offset % 60 != 0
    output = tool_part(Message.objects.get(role="assistant"), "get_local_time")["output"]
    assert output["timeZone"] == browser_zone and output["utcOffsetMinutes"] == offset
    suffix = f"{'+' if offset >= 0 else '-'}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d" + re.escape(suffix), output["localTime"]), output
    # Both tabs answered; the one that came second was told nothing waited, and kept quiet about it.
    assert refusals and {(r["code"], r["ref"].split(":")[0]) for r in refusals} == {("not_found", "tool-result")}


def test_a_page_that_joins_while_a_client_tool_waits_answers_it_from_the_replay(
    open_page, live_server_url, model_server
):
    make_user("sam", PASSWORD)
    sender = signed_in(open_page, live_server_url)
    create_room(sender, "Clock")
    room_id = str(Room.objects.get().pk)
    # The question comes from a bare protocol client that never answers tools (no chat.js on a CSS file).
    sender.goto("/static/chatrooms/app.css")
    model_server.enqueue(ScriptedReply(tool_calls=[("get_local_time", "{}")]), ScriptedReply(tokens=["Noted."]))
    sender.evaluate("""(roomId) => new Promise((resolve, reject) => {
        window.frames_seen = [];
        const socket = new WebSocket(`ws://${location.host}/ws/chat/`);
        socket.onmessage = (event) => window.frames_seen.push(JSON.parse(event.data));
        socket.onerror = reject;
        socket.onopen = () => {
            socket.send(JSON.stringify({type: "chat.send", roomId, requestId: "bare-1", text: "my time?"}));
            resolve();
        };
    })""", room_id)
    sender.wait_for_function(
        "window.frames_seen.some((f) => f.type === 'stream.chunk' && f.chunk.type === 'tool-input-available')",
        timeout=ANSWER_TIMEOUT_MS)

    page = signed_in(open_page, live_server_url, timezone_id=TIME_ZONE)
    page.goto(f"/rooms/{room_id}/")
    stored_answer(page, "Noted.")
    output = tool_part(Message.objects.get(role="assistant"), "get_local_time")["output"]
    assert output["timeZone"] == TIME_ZONE
    assert output["utcOffsetMinutes"] == page.evaluate("-new Date().getTimezoneOffset()")


# -- progress, data parts, usage, reasoning ----------------------------------------------------


def test_progress_data_parts_and_notes_show_live_and_after_a_reload(open_page, live_server_url, model_server, tools_gate):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    create_room(page, "Stages")
    model_server.enqueue(ScriptedReply(tool_calls=[("count_in_stages", "{}")]), ScriptedReply(tokens=["Counted."]))
    say(page, "count")

    live = page.locator("article.message.streaming")
    card = live.locator("details.tool-card")
    expect(card.locator(".tool-state")).to_have_text("In progress…", timeout=ANSWER_TIMEOUT_MS)
    card.locator("summary").click()
    expect(card.locator(".tool-output")).to_contain_text('"done": 1')
    expect(live.locator(".transient-status")).to_have_text("progress: counting sheep")
    expect(live.locator("details.data-part")).to_have_count(2)  # stage s1 and one log line
    tools_gate.touch()

    answer = stored_answer(page, "Counted.")
    expect(answer.locator(".tool-state")).to_have_text("Done")
    expect(answer.locator(".tool-output")).to_contain_text('"done": 3')
    expect(answer.locator(".transient-status")).to_have_count(0)  # transient: never stored
    for shown in (answer, None):
        if shown is None:
            page.reload()
            shown = page.locator("article.message.assistant").last
        data_parts = shown.locator("details.data-part")
        expect(data_parts).to_have_count(3)  # s1 updated in place, two log lines appended
        expect(data_parts.first).to_contain_text('{"stage": "finished"}')
        expect(shown.get_by_role("note")).to_have_text("Counting is an estimate.")
        expect(shown.locator(".usage")).to_have_text("openai/scripted · 20 in · 1 out")


def test_a_failing_tool_shows_as_failed_with_its_error(open_page, live_server_url, model_server):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    create_room(page, "Dice")
    model_server.enqueue(ScriptedReply(tool_calls=[("roll_dice", '{"sides": 1}')]), ScriptedReply(tokens=["Oops."]))
    say(page, "roll a d1")
    card = stored_answer(page, "Oops.").locator("details.tool-card")
    expect(card.locator(".tool-state")).to_have_text("Failed")
    card.locator("summary").click()
    expect(card.locator(".tool-error")).to_have_text("sides must be between 2 and 1000")


def test_the_usage_line_and_a_collapsed_reasoning_block_show_after_the_answer_and_after_a_reload(
    open_page, live_server_url, model_server
):
    make_user("sam", PASSWORD)
    page = signed_in(open_page, live_server_url)
    create_room(page, "Thoughts")
    model_server.enqueue(ScriptedReply(reasoning=["Let me ", "think ", "hard."], tokens=["Forty", "-two."], delay=0.3))
    say(page, "the answer?")

    live_reasoning = page.locator("article.message.streaming details.reasoning")
    expect(live_reasoning).to_contain_text("Let me think", timeout=ANSWER_TIMEOUT_MS)  # open while it streams
    stored_answer(page, "Forty-two.")
    for reloaded in (False, True):
        if reloaded:
            page.reload()
        answer = page.locator("article.message.assistant").last
        expect(answer.locator(".message-body")).to_contain_text("Forty-two.")
        reasoning = answer.locator("details.reasoning")
        expect(reasoning).to_have_count(1)
        expect(reasoning).not_to_have_attribute("open", re.compile(".*"))
        expect(reasoning.get_by_text("Reasoning")).to_be_visible()
        expect(reasoning.get_by_text("Let me think hard.")).to_be_hidden()
        expect(answer.locator(".usage")).to_have_text("openai/scripted · 10 in · 2 out")
    reasoning.get_by_text("Reasoning").click()
    expect(reasoning.get_by_text("Let me think hard.")).to_be_visible()
    # The reasoning comes before the answer's text.
    order = answer.locator(".message-body > *").evaluate_all("(nodes) => nodes.map((n) => n.tagName)")
    assert order[0] == "DETAILS", order
