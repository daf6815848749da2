"""The examples of docs/widgets.md, run in Chromium as a widget author would use them: in the
playground, in an embed, and in pages of one's own site."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pages import RECONNECT_TIMEOUT_MS, Playground, fresh
from playwright.sync_api import FrameLocator, Page, expect

from tests.http import Client
from tests.live import UNIT, Server

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "widgets.md"
NAMED = re.compile(r"^<!-- example: ([\w-]+) -->\n```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
BLOCK = re.compile(r"^```(\w+)\n", re.MULTILINE)


def examples() -> dict[str, str]:
    """Each example's code by the name in the comment above it."""
    return {m.group(1): m.group(3) for m in NAMED.finditer(DOC.read_text(encoding="utf-8"))}


def saved_widget_ids(live: Server) -> set[str]:
    status, body, _ = Client(live.http).request("GET", "/api/widgets",
                                                headers={"X-Api-Key": "demo"})
    assert status == 200
    return {widget["id"] for widget in body["widgets"] if not widget["builtin"]}


@pytest.fixture(autouse=True)
def forget_saved_widgets(live: Server) -> Iterator[None]:
    """Widgets an example saves are deleted after it, so other tests' playgrounds (and the
    README's screenshot) do not list them."""
    before = saved_widget_ids(live)
    yield
    for widget_id in saved_widget_ids(live) - before:
        Client(live.http).request("DELETE", f"/api/widgets/{widget_id}",
                                  headers={"X-Api-Secret": live.secret})


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
    """Every code block of the page is a named example, and each name has its test here."""
    text = DOC.read_text(encoding="utf-8")
    assert len(BLOCK.findall(text)) == len(examples())
    tested = {"poll-html", "poll-css", "poll-js", "api", "search", "destroy", "lifecycle",
              "own-page", "script-tag", "debug", "iframe"}
    assert set(examples()) == tested


def test_every_member_of_the_api_is_documented() -> None:
    """Every handler, method, property, option and setting the TypeScript declarations name,
    and every error code, appears on the page."""
    text = DOC.read_text(encoding="utf-8")
    declared = (ROOT / "static" / "c8-player-api.d.ts").read_text(encoding="utf-8")
    for block in ("interface C8WSConfig", "interface SocketOptions", "interface Socket "):
        body = declared.split(block, 1)[1].split("\n  }", 1)[0].split("\n}", 1)[0]
        for member in re.findall(r"^\s+(?:readonly )?(\w+)\??[:(]", body, re.MULTILINE):
            assert f"`{member}" in text, (block, member)
    for function in re.findall(r"^\s+(?:const|function) (\w+)", declared, re.MULTILINE):
        assert f"`c8PlayerApi.{function}" in text or f"`{function}(" in text, function
    for kind in ("SearchErrorCode", "ErrorCode"):
        union = declared.split(f"type {kind} =", 1)[1].split(";", 1)[0]
        for code in re.findall(r'\| "(\w+)"', union):
            if code != "forbidden":  # declared, but the server never sends it on a socket
                assert f"`{code}`" in text or f"`{code}`," in text, (kind, code)
    for attribute in re.findall(r"`(data-[\w-]+|c8ws_\w+)`", declared):
        assert f"`{attribute}`" in text, attribute


def test_poll_tutorial_in_the_playground(page: Page, live: Server) -> None:
    """The tutorial, step by step: a new widget in the playground with the page's HTML, CSS and
    JS; votes in two viewers show in both; a third viewer reads the counts from the store."""
    page.goto(f"{live.http}/playground")
    expect(page.locator("article.viewer")).to_have_count(2)
    page.get_by_role("button", name="+ New widget").click()
    expect(page.locator("#widget-id")).to_have_value("my-widget")
    page.locator("#widget-name").fill("Tea or coffee")
    page.locator("#widget-id").fill("tea-or-coffee")
    playground = Playground(page, live.http)
    playground.use_channel(fresh("tea-or-coffee"))
    code = examples()
    playground.set_code("html", code["poll-html"])
    playground.set_code("css", code["poll-css"])
    playground.set_code("js", code["poll-js"])
    playground.reload_all()
    alice, bob = playground.widget("alice"), playground.widget("bob")
    alice.get_by_role("button", name="Tea").click()
    expect(bob.locator("#results li")).to_have_text(["tea: 1"])
    bob.get_by_role("button", name="Coffee").click()
    alice.get_by_role("button", name="Coffee").click()
    for widget in (alice, bob):
        expect(widget.locator("#results li")).to_have_text(["coffee: 2", "tea: 1"])
    playground.add_viewer("carol")
    expect(playground.widget("carol").locator("#results li")).to_have_text(
        ["coffee: 2", "tea: 1"])
    expect(alice.locator("body")).to_have_css("font-family", "sans-serif")


def test_api_example(page: Page, live: Server) -> None:
    """The API sketch publishes on open and hears its own vote (notifySelf in embeds)."""
    widget = run_widget(page, live, "", examples()["api"])
    expect(widget.locator("body")).to_have_attribute("data-last", "yes")
    expect(widget.locator("title")).to_have_js_property("textContent", "1 online")


def test_search_example(page: Page, live: Server) -> None:
    """The search example finds the stored score by promise, and its mistake rejects with
    `invalid_query` through the callback."""
    widget = run_widget(page, live, "", examples()["search"])
    expect(widget.locator("body")).to_have_attribute("data-best", "ann 72")
    expect(widget.locator("body")).to_have_attribute("data-error", "invalid_query")


def test_destroy_example(page: Page, live: Server) -> None:
    """When the host emits widgetDestroy, the listener runs and the socket closes for good."""
    widget = run_widget(page, live, "", examples()["destroy"])
    expect(widget.locator("body")).to_be_attached()
    srcdoc = next(frame for frame in page.frames if frame.url == "about:srcdoc")
    srcdoc.wait_for_function("window.ws && ws.state === 'open'")
    srcdoc.evaluate("c8PlayerApi.emit('widgetDestroy')")
    expect(widget.locator("title")).to_have_js_property("textContent", "removed")
    expect(widget.locator("body")).to_have_attribute("data-closed", "1000")


def test_lifecycle_example(page: Page, live: Server) -> None:
    """Disconnected by an operator (4000), the widget says it will be back, reconnects as the
    same client, and gets a message published meanwhile exactly once."""
    widget_id, channel = fresh("doc"), fresh("ch")
    client = Client(live.http)
    client.request("PUT", f"/api/widgets/{widget_id}",
                   {"name": widget_id, "html": "", "js": examples()["lifecycle"]},
                   headers={"X-Api-Secret": live.secret})
    page.goto(f"{live.http}/embed/{widget_id}?channel={channel}&user=reader")
    body = page.frame_locator("iframe").locator("body")
    expect(body).to_have_attribute("data-log", re.compile(r"^open as \w+$"))
    client_id = (body.get_attribute("data-log") or "").removeprefix("open as ")
    status, _, _ = client.request(
        "POST", f"/api/channels/{channel}/members/{client_id}/disconnect",
        headers={"X-Api-Secret": live.secret})
    assert status == 200
    # Stored, so the widget recovers it even though nobody stayed in the channel meanwhile.
    status, _, _ = client.request("POST", "/api/publish", {
        "key": "demo", "secret": live.secret, "channelId": channel, "message": "meanwhile",
        "persistent": True})
    assert status == 200
    expect(body).to_have_attribute(
        "data-log", f"open as {client_id} | closed 4000, back soon | open as {client_id} | "
        "message meanwhile", timeout=RECONNECT_TIMEOUT_MS * UNIT)


def test_own_page_example(page: Page, live: Server,
                          own_site: Callable[[str, str], str]) -> None:
    """A page of one's own: window.C8WS with a token function gets a private channel, and the
    token's username comes back on the record."""
    status, body, _ = Client(live.http).request(
        "POST", "/broadcasting/auth", {"channel_name": "private-team", "username": "ann"})
    assert status == 200
    html = local(examples()["own-page"], live).replace("TOKEN", body["auth"])
    page.goto(own_site("team.html", html))
    expect(page.locator("#said")).to_have_text("ann: hello")


def test_script_tag_query_string_and_iframe(page: Page, live: Server,
                                            own_site: Callable[[str, str], str]) -> None:
    """The script-tag configuration connects from a plain page; without it, the page's query
    string names the channel; the iframe snippet shows the poll sample."""
    check = ("<script>var ws = new c8PlayerApi.webSocket();"
             "ws.onOpen = function () { document.title = 'connected ' + ws.channel; };</script>")
    page.goto(own_site("tag.html", local(examples()["script-tag"], live) + check))
    expect(page).to_have_title("connected poll1")
    bare = f'<script src="{live.http}/static/c8-player-api.js"></script>' + check
    page.goto(own_site("query.html", bare) + "?c8ws_channel=from-query")
    expect(page).to_have_title("connected from-query")
    # A link cannot name the server: the page's token would go wherever it said.
    page.goto(own_site("query.html", bare) + "?c8ws_channel=linked&c8ws_url=http://127.0.0.1:9")
    expect(page).to_have_title("connected linked")
    page.goto(own_site("embeds.html", local(examples()["iframe"], live)))
    poll = page.frame_locator("iframe").frame_locator("iframe")
    expect(poll.get_by_role("button", name="Red")).to_be_visible()


def test_debug_example(page: Page, live: Server, own_site: Callable[[str, str], str]) -> None:
    """With debug on, the listener logs the socket's status and every frame, welcome first."""
    logged: list[str] = []
    ours = re.compile(r"^(in|out|socket|error in) ")  # not the browser's own (a missing favicon)
    page.on("console", lambda message: ours.match(message.text) and logged.append(message.text))
    html = (f"<script>window.C8WS = {{debug: true, channel: '{fresh('debug')}'}};</script>"
            f'<script src="{live.http}/static/c8-player-api.js"></script>'
            f"<script>{examples()['debug']}\nvar ws = new c8PlayerApi.webSocket();</script>")
    with page.expect_console_message(lambda message: message.text == "socket open"):
        page.goto(own_site("debug.html", html))
    assert logged[0] == "socket connecting", logged
    assert logged[1].startswith('in {"welcome":'), logged


def test_a_links_debug_flag_reaches_the_page_only(page: Page, live: Server,
                                                  own_site: Callable[[str, str], str]) -> None:
    """`c8ws_debug` in a page's address posts the frames to that page, never to a parent frame
    (another site framing the page with that flag would read its channel)."""
    inner = own_site("inner.html", (
        "<script>window.addEventListener('message', function (event) {"
        " if (event.data && event.data.c8ws === 'status' && event.data.status === 'open')"
        " document.title = 'seen here'; });</script>"
        f'<script src="{live.http}/static/c8-player-api.js"></script>'
        "<script>new c8PlayerApi.webSocket();</script>"))
    outer = own_site("outer.html", (
        "<script>window.addEventListener('message', function (event) {"
        " if (event.data && event.data.c8ws) document.title = 'leaked'; });</script>"
        f'<iframe src="{inner}?c8ws_debug=1&c8ws_channel={fresh("dbg")}"></iframe>'))
    page.goto(outer)
    expect(page.frame_locator("iframe").locator("body")).to_be_attached()
    framed = page.frame(url=re.compile(r"/inner\.html"))
    assert framed is not None
    framed.wait_for_function("document.title === 'seen here'", timeout=10_000 * UNIT)
    assert page.title() != "leaked"
