"""The Content-Security-Policy in Chromium: no page reports a violation while a person logs in, chats (an
answer streams and renders), uses htmx forms, settings, search, moderation and the admin; and an inline
script really does not run."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from chatrooms.models import Room
from chatrooms.scripted_model_server import ScriptedReply
from tests.browser import login_page
from tests.factories import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]
PASSWORD = "a-long-enough-password"
FIRST_ANSWER_TIMEOUT_MS = 60_000

# Each page's `securitypolicyviolation` events, kept across navigations by the test (an init script runs
# before the page's own scripts, and is not itself subject to the page's policy).
RECORD_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  const seen = JSON.parse(sessionStorage.getItem("cspViolations") || "[]");
  seen.push(`${event.violatedDirective} blocked ${event.blockedURI || "inline"} on ${location.pathname}`);
  sessionStorage.setItem("cspViolations", JSON.stringify(seen));
});
"""


class Violations:
    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        page.context.add_init_script(RECORD_VIOLATIONS)
        page.on("console", lambda message: "Content Security Policy" in message.text
                and self.console.append(message.text))

    def recorded(self) -> list[str]:
        return self.page.evaluate('() => JSON.parse(sessionStorage.getItem("cspViolations") || "[]")')

    def assert_none(self) -> None:
        assert self.recorded() == [] and self.console == []


def test_no_page_reports_a_violation_and_the_page_still_works(open_page, live_server_url, model_server):
    user = make_user("sam", PASSWORD)
    user.is_staff = user.is_superuser = True
    user.save()
    page = open_page()
    violations = Violations(page)

    page.goto("/accounts/login/")
    response = page.request.get(f"{live_server_url}/accounts/login/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    login_page(page, live_server_url, "sam", PASSWORD)
    expect(page).to_have_url(f"{live_server_url}/")

    # A room (the page's script opens the socket), a message, a streamed answer rendered by the server.
    page.get_by_label("New room").fill("Policy")
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#room-title")).to_have_text("Policy")
    expect(page.get_by_role("status")).to_have_text("connected")
    model_server.enqueue(ScriptedReply(tokens=["A table:\n\n", "| a | b |\n", "|:--|--:|\n", "| 1 | 2 |\n"]))
    page.get_by_label("Message").fill("Show me a table")
    page.get_by_label("Message").press("Enter")
    answer = page.locator("article.message.assistant").last
    expect(answer.locator("td.align-right")).to_have_text("2", timeout=FIRST_ANSWER_TIMEOUT_MS)
    expect(page.locator("article.message.streaming")).to_have_count(0)
    assert answer.locator("td.align-right").evaluate("cell => getComputedStyle(cell).textAlign") == "right"

    # An htmx form: rename from the room settings.
    page.get_by_text("Room settings").click()
    page.get_by_label("Name", exact=True).fill("Renamed")
    page.get_by_role("button", name="Rename").click()
    expect(page.locator("#room-title")).to_have_text("Renamed")
    expect(page.locator("#room-list li.current")).to_contain_text("Renamed")
    assert Room.objects.get().name == "Renamed"

    # htmx's request indicator styles come from app.css, not from a <style> htmx would inject.
    assert page.evaluate("() => document.querySelectorAll('style').length") == 0

    # Search as you type (htmx), settings (a token field that selects itself: settings.js), moderation, admin.
    page.goto("/search/?q=table")
    expect(page.get_by_text("Show me a table").first).to_be_visible()
    page.goto("/settings/")
    page.get_by_label("Token name").fill("script")
    page.get_by_role("button", name="Create token").click()
    field = page.get_by_label("New token")
    field.focus()
    assert page.evaluate("() => window.getSelection().toString() || document.activeElement.value.substring("
                         "document.activeElement.selectionStart, document.activeElement.selectionEnd)") \
        == field.input_value()
    page.goto("/moderation/")
    expect(page.get_by_role("heading", name=re.compile("moderation", re.IGNORECASE)).first).to_be_visible()
    page.goto("/admin/")
    expect(page.locator("#moderation-link")).to_be_visible()
    assert page.locator("#moderation-link p").evaluate("p => getComputedStyle(p).paddingLeft") == "10px"

    violations.assert_none()


def test_an_inline_script_does_not_run(page: Page, live_server_url):
    violations = Violations(page)
    page.goto("/accounts/login/")
    page.evaluate("""() => {
        const script = document.createElement("script");
        script.textContent = "window.inlineRan = true";
        document.body.append(script);
        const button = document.createElement("button");
        button.setAttribute("onclick", "window.handlerRan = true");
        document.body.append(button);
        button.click();
    }""")
    assert page.evaluate("() => [window.inlineRan === true, window.handlerRan === true]") == [False, False]
    page.wait_for_function('() => JSON.parse(sessionStorage.getItem("cspViolations") || "[]").length >= 2')
    assert all(entry.startswith("script-src") for entry in violations.recorded())
