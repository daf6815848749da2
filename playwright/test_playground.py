"""The playground in a real browser: sample widgets in several sandboxed viewers at once, each a
different signed-in user, talking through the live server."""

from __future__ import annotations

import re

import pytest
from pages import README_IMAGES, RECONNECT_TIMEOUT_MS, Playground, fresh
from playwright.sync_api import FrameLocator, Locator, Page, expect

from tests.live import UNIT, Server

# A widget that shows every record it is handed, in order: no history, no de-duplication of its
# own, so whatever the shim delivers twice (or never) shows.
BARE_HTML = """<ol id="log"></ol>
<input id="text" aria-label="text"><button type="button" id="send">Send</button>
"""
BARE_JS = """var ws = new c8PlayerApi.webSocket({persistent: false});
ws.onMessage = function (record) {
  var item = document.createElement("li");
  item.textContent = record.username + ": " + record.data.text;
  document.getElementById("log").appendChild(item);
};
document.getElementById("send").addEventListener("click", function () {
  var input = document.getElementById("text");
  ws.publish({text: input.value});
  input.value = "";
});
"""
# The viewer's username, from the signed token the playground gave it.
WHO_AM_I = """var me = JSON.parse(atob(window.C8WS.token.split(".")[1]
  .replace(/-/g, "+").replace(/_/g, "/"))).username;
"""


def send(widget: FrameLocator, text: str) -> None:
    """Type into the chat sample and press Enter."""
    widget.locator("#text").fill(text)
    widget.locator("#text").press("Enter")


def said(widget: FrameLocator, text: str) -> Locator:
    return widget.locator("#messages li", has_text=text)


def say_bare(widget: FrameLocator, text: str) -> None:
    widget.locator("#text").fill(text)
    widget.get_by_role("button", name="Send").click()


def test_chat_between_two_viewers(page: Page, live: Server) -> None:
    """Two viewers of the chat sample see each other's messages under the sender's username."""
    playground = Playground(page, live.http).open("chat")
    alice, bob = playground.widget("alice"), playground.widget("bob")
    hello, reply = fresh("hello"), fresh("reply")

    send(alice, hello)
    expect(said(bob, hello).locator(".who")).to_have_text("alice")
    bob.locator("#text").fill(reply)
    bob.get_by_role("button", name="Send").click()
    expect(said(alice, reply).locator(".who")).to_have_text("bob")

    for widget in (alice, bob):
        expect(widget.locator("#messages li")).to_have_text([f"alice{hello}", f"bob{reply}"])
        expect(widget.locator("#online")).to_have_text("2 online")


def test_poll_counts_from_three_viewers(page: Page, live: Server) -> None:
    """Votes from three viewers show as the same counts in every viewer's chart, also after a
    reload, when the chart is read back from the store."""
    playground = Playground(page, live.http).open("poll")
    playground.add_viewer("carol")
    votes = {"alice": "Red", "bob": "Red", "carol": "Blue"}
    for name, colour in votes.items():
        playground.widget(name).get_by_role("button", name=colour).click()

    def charts_show_the_votes() -> None:
        for name in votes:
            chart = playground.widget(name).locator("#chart")
            expect(chart.locator('.row[data-vote="red"] .count')).to_have_text("2")
            expect(chart.locator('.row[data-vote="blue"] .count')).to_have_text("1")
            expect(chart.locator(".row")).to_have_count(2)
            expect(playground.widget(name).locator("#total")).to_have_text("3 votes")

    charts_show_the_votes()
    # A viewport as tall as the page: a full-page capture can miss sandboxed frames' paint.
    page.set_viewport_size({"width": 1280, "height": 960})
    page.wait_for_timeout(300)
    page.screenshot(path=str(README_IMAGES / "playground.png"))

    playground.reload_all()
    charts_show_the_votes()
    for name in votes:
        expect(playground.console(name)).to_contain_text("reloaded")


def test_reconnected_chat_viewer_shows_missed_messages_once(page: Page, live: Server) -> None:
    """A chat viewer disconnected and reconnected shows each message published meanwhile once;
    the browser's log of its failed attempts meanwhile does not show its token."""
    logged: list[str] = []
    page.on("console", lambda message: logged.append(message.text))
    playground = Playground(page, live.http).open("chat")
    alice, bob = playground.widget("alice"), playground.widget("bob")
    before, missed, after = fresh("before"), [fresh("missed"), fresh("missed")], fresh("after")
    send(bob, before)
    expect(said(alice, before)).to_have_count(1)

    playground.card("alice").get_by_role("button", name="Disconnect").click()
    expect(bob.locator("#online")).to_have_text("1 online")
    expect(playground.status("alice")).not_to_have_text("open")
    for text in missed:
        send(bob, text)
    expect(bob.locator("#messages li")).to_have_count(3)
    expect(said(alice, missed[0])).to_have_count(0)
    # At least one attempt fails while disconnected (the backoff's jitter may put the first one
    # after the messages above), so the browser's log of it can be read below.
    failed_attempt = "127.0.0.1:9/"  # the harness's closed port
    for _ in range(int(RECONNECT_TIMEOUT_MS * UNIT / 100)):
        if any(failed_attempt in text for text in logged):
            break
        page.wait_for_timeout(100)

    playground.card("alice").get_by_role("button", name="Reconnect").click()
    expect(playground.status("alice")).to_have_text("open", timeout=RECONNECT_TIMEOUT_MS * UNIT)
    send(alice, after)  # answered after the history and the recovered records
    expect(said(alice, after)).to_have_count(1)
    expect(alice.locator("#messages li")).to_have_text(
        [f"bob{before}", f"bob{missed[0]}", f"bob{missed[1]}", f"alice{after}"])
    expect(bob.locator("#online")).to_have_text("2 online")
    assert any(failed_attempt in text for text in logged)
    assert not [text for text in logged if "jwt=" in text]


def test_reconnected_viewer_recovers_non_persistent_messages_once(page: Page, live: Server) -> None:
    """A viewer of a non-persistent widget with no history of its own gets the messages published
    while it was disconnected exactly once, from the server's recovery alone."""
    playground = Playground(page, live.http).open("chat")
    playground.set_code("html", BARE_HTML)
    playground.set_code("js", BARE_JS)
    playground.reload_all()
    alice, bob = playground.widget("alice"), playground.widget("bob")
    before, missed, after = fresh("before"), [fresh("missed"), fresh("missed")], fresh("after")
    say_bare(bob, before)
    expect(alice.locator("#log li")).to_have_text([f"bob: {before}"])

    playground.card("alice").get_by_role("button", name="Disconnect").click()
    expect(playground.status("alice")).not_to_have_text("open")
    for text in missed:
        say_bare(bob, text)
    expect(bob.locator("#log li")).to_have_count(3)

    playground.card("alice").get_by_role("button", name="Reconnect").click()
    expect(playground.status("alice")).to_have_text("open", timeout=RECONNECT_TIMEOUT_MS * UNIT)
    say_bare(alice, after)
    expect(alice.locator("#log li")).to_have_text(
        [f"bob: {before}", f"bob: {missed[0]}", f"bob: {missed[1]}", f"alice: {after}"])
    expect(playground.console("alice")).to_contain_text('"recovered"')


# Failed once (carol never got alice's message) in a full `make test` under load, and never in
# isolation; one rerun while the cause is found (see the closing note of 2026-11-23).
@pytest.mark.flaky(reruns=1)
def test_throwing_widget_is_reported_and_others_keep_working(page: Page, live: Server) -> None:
    """A widget that throws at load for one user shows the error in that viewer's console, and
    the other viewers still exchange messages."""
    playground = Playground(page, live.http).open("chat")
    playground.add_viewer("carol")
    playground.set_code("html", BARE_HTML)
    playground.set_code("js", WHO_AM_I + 'if (me === "bob") throw new Error("boom");\n' + BARE_JS)
    playground.reload_all(opening=["alice", "carol"])

    bob = playground.card("bob")
    expect(bob).to_have_class(re.compile(r"\bhas-error\b"))
    expect(bob.locator("details")).to_have_attribute("open", "")
    expect(bob.locator("ol.console li.error")).to_contain_text(["Error: boom"])
    expect(playground.widget("bob").locator("#log li")).to_have_count(0)

    alice, carol = playground.widget("alice"), playground.widget("carol")
    ping, pong = fresh("ping"), fresh("pong")
    say_bare(alice, ping)
    expect(carol.locator("#log li")).to_have_text([f"alice: {ping}"])
    say_bare(carol, pong)
    expect(alice.locator("#log li")).to_have_text([f"alice: {ping}", f"carol: {pong}"])
    for name in ("alice", "carol"):
        expect(playground.card(name)).not_to_have_class(re.compile(r"\bhas-error\b"))


def test_a_handler_that_throws_is_reported_once(page: Page, live: Server) -> None:
    """A widget's onOpen that throws shows in the viewer's console once, with its stack (the
    shim's own console line used to show as well)."""
    playground = Playground(page, live.http).open("chat")
    playground.set_code("html", BARE_HTML)
    playground.set_code("js", BARE_JS + 'ws.onOpen = function () { throw new Error("kaboom"); };\n')
    playground.reload_all()
    console = playground.console("alice")
    expect(console.locator("li.error")).to_contain_text(["kaboom"])
    page.wait_for_timeout(500)  # the other copy, if any, would have come with it
    expect(console.locator("li", has_text="kaboom")).to_have_count(1)
    expect(console.locator("li.error")).to_contain_text(["onOpen threw: kaboom"])


def test_an_invalid_channel_is_refused_and_said(page: Page, live: Server) -> None:
    """A channel id the server would refuse is named as such, and the viewers keep running on
    their channel; reloaded with it anyway, each viewer says why it did not start (it used to
    stay on "loading" with an uncaught error)."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    playground = Playground(page, live.http).open("chat")
    field = page.locator("#channel")
    field.fill("bad channel!")
    field.blur()
    expect(page.locator("#notice")).to_have_text(
        "A channel id is 1 to 64 letters, digits, '_' or '-'.")
    expect(page.locator("#notice")).to_have_class("error")
    for name in ("alice", "bob"):
        expect(playground.status(name)).to_have_text("open")
    page.get_by_role("button", name="▶ Run / reload all").click()
    for name in ("alice", "bob"):
        expect(playground.status(name)).to_have_text("error")
        expect(playground.console(name).locator("li.error")).to_contain_text(
            ["not started: channel_name"])
    assert errors == []


def test_new_widget_and_share_link_follow_the_page(page: Page, live: Server) -> None:
    """"+ New widget" leaves the sample behind (its own channel, no sample selected, no
    #widget in the URL); Save without an id says what is missing; the share link names the key
    and follows the channel."""
    page.goto(f"{live.http}/playground#widget=chat")  # on the sample's own channel
    expect(page.locator("#channel")).to_have_value("chat")
    page.get_by_role("button", name="Share embed link").click()
    expect(page.locator("#share-url")).to_have_value(
        f"{live.http}/embed/chat?api_key=demo&channel=chat")
    page.get_by_role("button", name="+ New widget").click()
    expect(page.locator("#channel")).to_have_value("my-widget")
    expect(page.locator("#widget-list button.current")).to_have_count(0)
    expect(page).to_have_url(re.compile(r"/playground$"))
    expect(page.locator("#share-url")).to_have_value(
        f"{live.http}/embed/my-widget?api_key=demo&channel=my-widget")
    page.fill("#widget-id", "")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#notice")).to_have_text(
        "Give the widget an id first: lowercase letters, digits and '-'.")


def test_a_search_failing_unheeded_shows_in_the_console(page: Page, live: Server) -> None:
    """A widget's search that fails with no .catch is an unhandled rejection the viewer's
    console shows (the shim is loaded with CORS: a cross-origin script's rejections are muted)."""
    playground = Playground(page, live.http).open("chat")
    playground.set_code("js", "var ws = new c8PlayerApi.webSocket({persistent: true});\n"
                        'ws.onOpen = function () { ws.search({sortField: "data..x"}); };\n')
    playground.reload_all()
    for name in ("alice", "bob"):
        expect(playground.console(name).locator("li.error")).to_contain_text(
            ["Unhandled rejection: Error: sortField: unknown field 'data..x'"])


def test_a_phone_sized_window_needs_no_sideways_scrolling(page: Page, live: Server) -> None:
    """At 420 px wide the playground and the docs fit their width: panes stack, tables and code
    scroll inside themselves."""
    page.set_viewport_size({"width": 420, "height": 900})
    Playground(page, live.http).open("chat")
    for path in (None, "/docs/protocol", "/docs"):
        if path is not None:
            page.goto(f"{live.http}{path}")
        assert page.evaluate("document.documentElement.scrollWidth") <= 420, path


SNOOP_HTML = '<p id="cookie"></p><p id="parent"></p><p id="storage"></p>\n'
SNOOP_JS = """function attempt(id, read) {
  var got;
  try { got = "read " + JSON.stringify(read()); } catch (error) { got = "threw " + error.name; }
  document.getElementById(id).textContent = got;
  console.log(id + ": " + got);
}
attempt("cookie", function () { return document.cookie; });
attempt("parent", function () { return window.parent.document.cookie; });
attempt("storage", function () { return window.localStorage.length; });
"""


def test_widget_sandbox_keeps_the_playground_private(page: Page, live: Server) -> None:
    """Viewers are sandbox="allow-scripts" frames: a widget cannot read the playground's cookies,
    document or storage, and the app secret is in no viewer's source."""
    assert live.secret
    playground = Playground(page, live.http).open("chat")
    page.evaluate("document.cookie = 'probe=visible-to-the-playground; path=/'")
    assert "probe=visible-to-the-playground" in page.evaluate("document.cookie")
    playground.set_code("html", SNOOP_HTML)
    playground.set_code("js", SNOOP_JS)
    playground.reload_all(opening=[])  # it opens no socket

    for name in ("alice", "bob"):
        widget = playground.widget(name)
        expect(widget.locator("#cookie")).to_have_text(
            re.compile(r'^(threw SecurityError|read "")$'))
        expect(widget.locator("#parent")).to_have_text("threw SecurityError")
        expect(widget.locator("#storage")).to_have_text("threw SecurityError")
        expect(playground.console(name)).to_contain_text("console.log: cookie: ")
        frame = playground.card(name).locator("iframe")
        assert frame.get_attribute("sandbox") == "allow-scripts"
        srcdoc = frame.get_attribute("srcdoc") or ""
        assert '"token":' in srcdoc
        assert live.secret not in srcdoc
    assert live.secret not in page.content()
