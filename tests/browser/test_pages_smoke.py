"""Smoke tests in Chromium: sign up, log out, log in, and a home page that loads styled and error-free.

They select by role and label, as a person reads the page, so that they hold while the UI changes.
"""
from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Locator, Page, Response, expect

from tests.browser import ARTIFACTS, PASSWORD_LABEL, login_page
from tests.factories import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]
PASSWORD = "a-long-enough-password"


def rooms_list(page: Page) -> Locator:
    """What a signed-in person's home shows: "Your rooms", or a landmark named Rooms."""
    return page.get_by_text("Your rooms").or_(page.get_by_role("complementary", name="Rooms"))


def test_sign_up_log_out_and_log_in_again(page: Page, live_server_url: str):
    page.goto("/accounts/signup/")
    page.get_by_label("Username").fill("newcomer")
    page.get_by_label(PASSWORD_LABEL).fill(PASSWORD)
    page.get_by_label("Password confirmation").fill(PASSWORD)
    page.get_by_role("button", name=re.compile("create account|sign up", re.IGNORECASE)).click()

    expect(page).to_have_url(f"{live_server_url}/")
    expect(rooms_list(page)).to_be_visible()
    expect(page.get_by_text("newcomer", exact=True)).to_be_visible()
    assert get_user_model().objects.filter(username="newcomer").exists()

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{live_server_url}/accounts/login/")
    expect(page.get_by_role("button", name="Log out")).to_have_count(0)
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))

    login_page(page, live_server_url, "newcomer", PASSWORD)
    expect(page).to_have_url(f"{live_server_url}/")
    expect(rooms_list(page)).to_be_visible()


def test_a_wrong_password_is_refused_and_the_right_one_lets_in(page: Page, live_server_url: str):
    make_user("sam", PASSWORD)

    login_page(page, live_server_url, "sam", "not-the-password")
    expect(page).to_have_url(f"{live_server_url}/accounts/login/")
    expect(page.get_by_text(re.compile("enter a correct username and password"))).to_be_visible()

    login_page(page, live_server_url, "sam", PASSWORD)
    expect(page).to_have_url(f"{live_server_url}/")
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def test_the_home_page_loads_styled_and_without_errors(page: Page, live_server_url: str):
    failed: list[str] = []

    def note_failure(response: Response) -> None:
        if response.status >= 400:
            failed.append(f"{response.status} {response.url}")

    errors: list[str] = []
    page.on("response", note_failure)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    make_user("sam", PASSWORD)

    login_page(page, live_server_url, "sam", PASSWORD)
    expect(page).to_have_url(f"{live_server_url}/")
    expect(rooms_list(page)).to_be_visible()
    page.wait_for_load_state("load")
    # The stylesheet came from /static/ (WhiteNoise) and has rules: the page is not unstyled.
    styled = page.evaluate(
        """() => [...document.styleSheets].some(
               sheet => sheet.href && new URL(sheet.href).pathname.startsWith('/static/') && sheet.cssRules.length > 0)"""
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "home.png", full_page=True)
    assert styled, "no stylesheet from /static/ applied"
    assert failed == [], "requests failed"
    assert errors == [], "JavaScript errors"
