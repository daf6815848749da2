"""Browser tests: a live server in its own process with a file SQLite, Debian's Chromium driven
by Playwright, and a screenshot of every page kept when a test fails."""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

# `pytest playwright/` alone does not put the repository root on the path (this folder is not a
# package: as one, it would shadow the `playwright` library it imports).
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from pages import ARTIFACTS  # noqa: E402

from tests.live import UNIT, Server  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 10_000 * UNIT
"""How long a wait in the page may take: a multiple of the test timeout unit."""

expect.set_options(timeout=TIMEOUT_MS)


def pytest_configure(config: pytest.Config) -> None:
    # pytest-base-url (a pytest-playwright dependency) declares a fixture the way pytest warns of.
    config.addinivalue_line("filterwarnings", "ignore:Session-scoped fixtures defined as instance"
                            " methods:pytest.PytestRemovedIn10Warning")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": ARGS}


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the browser tests."""
    server = Server(tmp_path_factory.mktemp("browser")).start()
    yield server
    server.stop()


@pytest.fixture
def page(page: Page) -> Page:
    """pytest-playwright's page, with actions waiting as long as assertions."""
    page.set_default_timeout(TIMEOUT_MS)
    return page


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        page = item.funcargs.get("page") if hasattr(item, "funcargs") else None
        if isinstance(page, Page):
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{item.name}.png"), full_page=True)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def own_site(tmp_path: Path) -> Iterator[Callable[[str, str], str]]:
    """A widget author's own site (another port of 127.0.0.1, so another origin): a function
    that publishes a page there and returns its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def publish(name: str, html: str) -> str:
        (tmp_path / name).write_text(html, encoding="utf-8")
        return f"http://127.0.0.1:{server.server_address[1]}/{name}"

    yield publish
    server.shutdown()
    server.server_close()
    thread.join()
