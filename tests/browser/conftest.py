"""Fixtures for browser tests: Debian's Chromium under Playwright's sync API, and a live daphne worker.

Write browser tests as plain `def` functions (not `async def`), marked
`pytest.mark.django_db(transaction=True)` and `pytest.mark.browser`, in this folder.

The event loop. Playwright's sync API runs an asyncio loop of its own in a greenlet, and while it is
connected that loop is this thread's *running* loop, also between two Playwright calls (greenlet
switches do not touch asyncio's thread-local). Two things follow:

- pytest-asyncio can run no async test while Playwright is connected ("cannot be called from a running
  event loop"). So Playwright and the browser are `package`-scoped, not session-scoped: started by the
  first test in tests/browser and stopped after the last one (which unsets the running loop), before
  any other async test runs. All browser tests live in this one package, so Chromium starts once per run.
- Django refuses synchronous ORM calls in a thread with a running loop (SynchronousOnlyOperation), and
  browser tests use the ORM synchronously: their own set-up (tests.factories) and pytest-django's
  flush after each transactional test. Those calls run between Playwright calls, in plain sync code,
  never in a coroutine on Playwright's loop: safe. So while this package runs, DJANGO_ALLOW_ASYNC_UNSAFE
  is set in this test process (Django's own switch for such environments, e.g. Jupyter). It is restored
  afterwards, and DaphneWorker never passes it on: the servers keep Django's checks.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import re
import shutil
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser import ARTIFACTS
from tests.conftest import require_service
from tests.servers import DaphneWorker

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 15_000  # Playwright's actions and navigations (its default is 30 s)

reports_key = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """Remember each phase's report, so that fixtures can tell at teardown whether the test failed."""
    report = yield
    item.stash.setdefault(reports_key, {})[report.when] = report
    return report


def _failed(item: pytest.Item) -> bool:
    return any(report.failed for report in item.stash.get(reports_key, {}).values())


@pytest.fixture(scope="package")
def browser(django_db_setup: None) -> Iterator[Browser]:
    """Debian's Chromium (apt `chromium`), headless, shared by the tests of this package.

    (It asks for django_db_setup so that the test database is made before Playwright's loop starts.)
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_service("playwright", False, "the Python package is missing: pip install -e '.[test]'")
    executable = shutil.which("chromium")
    require_service("chromium", executable is not None,
                    "install Debian's package (apt-get install chromium); Playwright downloads no browser here")
    if asyncio._get_running_loop() is not None:
        pytest.fail("an event loop is running: browser tests must be plain `def` functions, not `async def`")

    allowed = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()  # ends Playwright's loop: this thread has no running loop again
        if allowed is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = allowed


@pytest.fixture
def live_server_url(request: pytest.FixtureRequest, worker: DaphneWorker) -> str:
    """http://127.0.0.1:PORT of a fresh daphne worker (tests/conftest.py `worker`) for this test.

    It serves the test database and answers with the scripted model server: queue replies with
    `model_server.enqueue(ScriptedReply(...))` (request the `model_server` fixture too).
    """
    marker = request.node.get_closest_marker("django_db")
    transactional = marker is not None and (marker.kwargs.get("transaction") or (marker.args and marker.args[0]))
    if not transactional:
        pytest.fail("browser tests need pytest.mark.django_db(transaction=True): the server sees committed rows only")
    return worker.http_url


@pytest.fixture
def open_page(request: pytest.FixtureRequest, browser: Browser, live_server_url: str) -> Iterator[Callable[[], Page]]:
    """open_page() -> a Page in a new browser context (its own cookies: one more signed-in person).

    Pages have base_url=live_server_url (page.goto("/") works) and a 1280x800 viewport; keyword
    arguments go to `browser.new_context` (e.g. open_page(timezone_id="Asia/Tehran")). After a failed
    test, each page's screenshot goes to test-artifacts/<test name>.png (then -2.png, ...) and its
    JavaScript errors are printed.
    """
    if inspect.iscoroutinefunction(getattr(request, "function", None)):
        pytest.fail("browser tests must be plain `def` functions: Playwright's sync API runs its own event loop")
    opened: list[tuple[Page, list[str]]] = []

    def open_one(**context_options: Any) -> Page:
        context = browser.new_context(base_url=live_server_url, viewport=VIEWPORT, **context_options)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
        page.on("console", lambda message: message.type == "error" and errors.append(f"console error: {message.text}"))
        opened.append((page, errors))
        return page

    yield open_one

    failed = _failed(request.node)
    name = re.sub(r"[^\w.-]+", "_", request.node.name)
    for index, (page, errors) in enumerate(opened, start=1):
        if failed:
            path = ARTIFACTS / (f"{name}.png" if index == 1 else f"{name}-{index}.png")
            try:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=path, full_page=True)
                print(f"screenshot of page {index} ({page.url}): {path}")
            except Exception as error:  # a crashed page or browser: the test's own failure says more
                print(f"no screenshot of page {index}: {error}")
            print("\n".join(errors))
        page.context.close()


@pytest.fixture
def page(open_page: Callable[[], Page]) -> Page:
    """A fresh page (new context, no cookies) on the live server; see `open_page`."""
    return open_page()

