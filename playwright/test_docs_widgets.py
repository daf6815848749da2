"""The examples of docs/widgets.md, run in Chromium as a widget author would use them."""

from __future__ import annotations

import re
from pathlib import Path

from pages import fresh
from playwright.sync_api import FrameLocator, Page, expect

from tests.http import Client
from tests.live import Server

DOC = Path(__file__).resolve().parent.parent / "docs" / "widgets.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(DOC.read_text(encoding="utf-8"))]


def run_widget(page: Page, live: Server, html: str, js: str) -> FrameLocator:
    """Save the code as a widget and open its embed page on a fresh channel."""
    widget_id = fresh("doc")
    status, _, _ = Client(live.http).request(
        "PUT", f"/api/widgets/{widget_id}", {"name": widget_id, "html": html, "js": js},
        headers={"X-Api-Secret": live.secret})
    assert status == 200
    page.goto(f"{live.http}/embed/{widget_id}?channel={fresh('ch')}&user=reader")
    return page.frame_locator("iframe")


def local(code: str, live: Server) -> str:
    return code.replace("127.0.0.1:8000", f"127.0.0.1:{live.port}")


def test_every_example_is_covered() -> None:
    """The page's examples are the five this test runs, in order."""
    assert [kind for kind, _ in examples()] == ["js", "html", "js", "html", "html"]


def test_api_example(page: Page, live: Server) -> None:
    """The API sketch publishes on open and hears its own vote (notifySelf in embeds)."""
    _, js = examples()[0]
    widget = run_widget(page, live, "", js)
    expect(widget.locator("body")).to_have_attribute("data-last", "yes")
    expect(widget.locator("title")).to_have_js_property("textContent", "1 online")


def test_poll_tutorial(page: Page, live: Server) -> None:
    """The tutorial's poll counts votes through groupBy."""
    (_, html), (_, js) = examples()[1], examples()[2]
    widget = run_widget(page, live, html, js)
    widget.get_by_role("button", name="Tea").click()
    expect(widget.locator("#results li")).to_have_text(["tea: 1"])
    widget.get_by_role("button", name="Coffee").click()
    widget.get_by_role("button", name="Coffee").click()
    expect(widget.locator("#results li")).to_have_text(["coffee: 2", "tea: 1"])


def test_script_tag_and_iframe_embedding(page: Page, live: Server) -> None:
    """The script-tag configuration connects from a plain page; the iframe snippet shows the
    poll sample."""
    script_tag, iframe = examples()[3][1], examples()[4][1]
    check = ("<script>var ws = new c8PlayerApi.webSocket();"
             "ws.onOpen = function () { document.title = 'connected ' + ws.channel; };</script>")
    page.goto(f"{live.http}/healthz")  # same origin as the server, so file-free hosting
    page.set_content(local(script_tag, live) + check)
    expect(page).to_have_title("connected poll1")
    page.set_content(local(iframe, live))
    poll = page.frame_locator("iframe").frame_locator("iframe")
    expect(poll.get_by_role("button", name="Red")).to_be_visible()
