"""The shim's own behaviour in a page of a widget author's site, where the docs' examples do not
reach: a token function that fails, and the destroy event's listeners."""

from __future__ import annotations

from collections.abc import Callable

from pages import fresh
from playwright.sync_api import Page, expect

from tests.live import UNIT, Server


def page_with(live: Server, config: str, script: str) -> str:
    return (f"<script>window.C8WS = {config};</script>"
            f'<script src="{live.http}/static/c8-player-api.js"></script>'
            f"<script>{script}</script>")


def test_a_token_function_that_throws_is_tried_again(
        page: Page, live: Server, own_site: Callable[[str, str], str]) -> None:
    """A token function that throws once is reported as token_failed and the socket tries
    again (it used to close for good, reporting a bad url)."""
    script = """var calls = 0, errors = [];
window.C8WS.token = function () { calls += 1; if (calls === 1) throw new Error("no tag yet"); };
var ws = new c8PlayerApi.webSocket();
ws.onError = function (error) { errors.push(error.code); };
ws.onOpen = function () { document.title = "open after " + errors.join(","); };"""
    page.goto(own_site("token.html", page_with(live, f"{{channel: '{fresh('tok')}'}}", script)))
    expect(page).to_have_title("open after token_failed", timeout=10_000 * UNIT)


def test_taking_the_widgets_destroy_listeners_away_still_closes(
        page: Page, live: Server, own_site: Callable[[str, str], str]) -> None:
    """off("widgetDestroy") takes the widget's listeners away, not the shim's own closing of
    its sockets."""
    script = """var ws = new c8PlayerApi.webSocket();
ws.onOpen = function () {
  c8PlayerApi.on("widgetDestroy", function () { document.title = "listener ran"; });
  c8PlayerApi.off("widgetDestroy");
  c8PlayerApi.emit("widgetDestroy");
  document.body.dataset.state = ws.state;
};"""
    page.goto(own_site("destroy.html", page_with(live, f"{{channel: '{fresh('bye')}'}}", script)))
    expect(page.locator("body")).to_have_attribute("data-state", "closed")
    assert page.title() != "listener ran"
