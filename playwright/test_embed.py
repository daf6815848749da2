"""The embed page inside another site's iframe: a different origin, nested sandboxed widgets."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pages import ARTIFACTS, fresh
from playwright.sync_api import FrameLocator, Page, expect

from tests.live import Server


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def other_site(tmp_path: Path) -> Iterator[Callable[[str, str], str]]:
    """Another origin (another port of 127.0.0.1) serving static pages; yields a function that
    publishes a page and returns its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def publish(name: str, html: str) -> str:
        (tmp_path / name).write_text(html)
        return f"http://127.0.0.1:{server.server_address[1]}/{name}"

    yield publish
    server.shutdown()
    server.server_close()
    thread.join()


def send(widget: FrameLocator, text: str) -> None:
    widget.locator("#text").fill(text)
    widget.get_by_role("button", name="Send").click()


def test_chat_embedded_in_another_site(
    page: Page, live: Server, other_site: Callable[[str, str], str]
) -> None:
    """Two chat embeds in a page of another origin talk to each other as their users."""
    channel = fresh("embed")
    embed = f"{live.http}/embed/chat?channel={channel}"
    url = other_site("host.html", f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Another site</title>
<style>body {{ font-family: sans-serif; }} iframe {{ border: 1px solid #ccc; }}</style></head>
<body><h1>Another site</h1>
<iframe id="zoe" src="{embed}&user=zoe" width="400" height="300"></iframe>
<iframe id="yan" src="{embed}&user=yan" width="400" height="300"></iframe>
</body></html>
""")
    page.goto(url)
    assert page.evaluate("location.origin") != live.http
    # Another origin: the host page cannot reach into the embeds.
    assert page.evaluate("document.getElementById('zoe').contentDocument") is None

    zoe = page.frame_locator("#zoe").frame_locator("iframe")
    yan = page.frame_locator("#yan").frame_locator("iframe")
    expect(zoe.locator("#online")).to_have_text("2 online")
    hello, reply = fresh("hello"), fresh("reply")
    send(zoe, hello)
    expect(yan.locator("#messages li", has_text=hello).locator(".who")).to_have_text("zoe")
    send(yan, reply)
    for widget in (zoe, yan):
        expect(widget.locator("#messages li")).to_have_text([f"zoe{hello}", f"yan{reply}"])

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "embed.png"), full_page=True)


def test_embed_page_hides_the_secret(page: Page, live: Server) -> None:
    """The embed page's widget runs in a sandbox="allow-scripts" frame, and the page carries a
    signed token for its user but never the app secret."""
    assert live.secret
    page.goto(f"{live.http}/embed/chat?channel={fresh('embed')}&user=zoe")
    frame = page.locator("iframe")
    assert frame.get_attribute("sandbox") == "allow-scripts"
    expect(page.frame_locator("iframe").locator("#online")).to_have_text("1 online")
    html = page.content()
    assert '"token":' in html
    assert live.secret not in html
