"""Browser tests: Debian's Chromium, driven by Playwright's sync API, against a live daphne worker.

Fixtures (tests/browser/conftest.py): `browser`, `live_server_url`, `open_page` and `page`.
Helpers for the test modules live here: `from tests.browser import login_page`.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tests.servers import ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Page

ARTIFACTS = ROOT / "test-artifacts"  # git-ignored: screenshots of failed browser tests, and home.png
# The password field's label, "Password" or Django's "Password:", and not "Password confirmation".
PASSWORD_LABEL = re.compile(r"^Password:?$")


def login_page(page: Page, base_url: str, username: str, password: str) -> None:
    """Fill Django's standard login form at /accounts/login/ and submit it.

    Returns once the answer has loaded: home after a good password (LOGIN_REDIRECT_URL), the form again
    with an error after a wrong one. The caller asserts which.
    """
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label(PASSWORD_LABEL).fill(password)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()
