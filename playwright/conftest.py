"""Browser tests: a live server in its own process with a file SQLite, Debian's Chromium driven
by Playwright, and a screenshot of every page kept when a test fails."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
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
