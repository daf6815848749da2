"""The shim's own behaviour in a page of a widget author's site, where the docs' examples do not
reach: a token function that fails, the destroy event's listeners and names, pacing, counts and
a server that cannot be reached."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from pages import fresh
from playwright.sync_api import Page, expect

from tests.broker.conftest import RedisServer, require_redis_server
from tests.http import Client
from tests.live import UNIT, Server

# Keeps the page's pending timeouts so a test can fire them at once, as though their delays had
# run out: all of them (whatever the shim left scheduled happens now, not after some backoff),
# or those set with one delay; how many it fired.
TIMER_LEDGER = """var nativeSetTimeout = window.setTimeout;
var nativeClearTimeout = window.clearTimeout;
var pendingTimers = new Map();
window.setTimeout = function (callback, delay) {
  var id = nativeSetTimeout(function () { pendingTimers.delete(id); callback(); }, delay);
  pendingTimers.set(id, {callback: callback, delay: delay});
  return id;
};
window.clearTimeout = function (id) { pendingTimers.delete(id); nativeClearTimeout(id); };
window.fireTimers = function (delay) {
  var due = Array.from(pendingTimers).filter(function (entry) {
    return delay === undefined || entry[1].delay === delay;
  });
  due.forEach(function (entry) { pendingTimers.delete(entry[0]); nativeClearTimeout(entry[0]); });
  due.forEach(function (entry) { entry[1].callback(); });
  return due.length;
};"""
IDLE_PING_MS = 25_000  # the shim's quiet time before it pings the server
PONG_TIMEOUT_MS = 10_000  # and how long it then waits for the pong


def stored(live: Server, channel: str) -> int:
    """How many records the channel has in the store (a search's total)."""
    body = Client(live.http).request("POST", f"/api/channels/{channel}/search", {"limit": 1},
                                     headers={"X-Api-Key": "demo"})[1]
    return int(body["total"])


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


def test_event_names_are_any_strings(
        page: Page, live: Server, own_site: Callable[[str, str], str]) -> None:
    """An event named like an Object property ("constructor", "toString") is an event like
    any other: emitting one nobody listens to is quiet, and its listeners are called (the bus
    used to find Object's own functions there and throw)."""
    script = """var heard = [];
c8PlayerApi.emit("toString");
c8PlayerApi.on("constructor", function (value) { heard.push(value); });
c8PlayerApi.emit("constructor", 7);
c8PlayerApi.off("hasOwnProperty");
document.title = "heard " + heard.join(",");"""
    page.goto(own_site("names.html", page_with(live, "{}", script)))
    expect(page).to_have_title("heard 7")


def test_publishes_queued_before_the_welcome_all_arrive(
        page: Page, live: Server, own_site: Callable[[str, str], str]) -> None:
    """600 publishes made before the socket opened go out no faster than the connection's
    rate limit (200 a second after 400), so all of them are stored, in order (about a third
    used to be dropped as rate_limited)."""
    channel = fresh("burst")
    script = """var errors = [];
var ws = new c8PlayerApi.webSocket({persistent: true});
ws.onError = function (error) { errors.push(error.code); };
for (var i = 0; i < 600; i++) ws.publish({i: i});
window.errors = errors;"""
    page.goto(own_site("burst.html", page_with(live, f"{{channel: '{channel}'}}", script)))
    deadline = time.monotonic() + 20 * UNIT
    while stored(live, channel) < 600:
        assert time.monotonic() < deadline, stored(live, channel)
        time.sleep(0.2)
    assert page.evaluate("window.errors") == []
    body = Client(live.http).request("POST", f"/api/channels/{channel}/search",
                          {"limit": 1000, "sortField": "seq", "sortOrder": "asc"},
                          headers={"X-Api-Key": "demo"})[1]
    assert [item["data"]["i"] for item in body["items"]] == list(range(600))


def test_a_heartbeat_ping_waits_for_the_rate_limit_like_a_publish(
        page: Page, own_site: Callable[[str, str], str], tmp_path: Path) -> None:
    """The server counts a ping against the connection's rate limit, so the shim does too: a
    ping due while publishes go out at the limit waits for its turn, and the server refuses
    none of them. Pings sent past the limit took the tokens publishes needed, and those
    publishes were dropped as rate_limited once pings outgrew the shim's margin (a slow
    limit, or, as here, pings made due again and again)."""
    server = Server(tmp_path, {"C8WS_MSG_RATE": "20", "C8WS_MSG_BURST": "20"}).start()
    try:
        channel = fresh("pingpace")
        script = f"""{TIMER_LEDGER}
var errors = [];
var ws = new c8PlayerApi.webSocket({{persistent: true}});
ws.onError = function (error) {{ errors.push(error.code); }};
ws.onOpen = function () {{
  for (var i = 0; i < 60; i++) ws.publish({{i: i}});
  document.title = "published";
}};
window.errors = errors;"""
        page.goto(own_site("pingpace.html",
                           page_with(server, f"{{channel: '{channel}'}}", script)))
        expect(page).to_have_title("published")
        pings = 0
        for _ in range(25):  # past the burst, 40 publishes take 2 s at 20/s: ping meanwhile
            pings += page.evaluate(f"window.fireTimers({IDLE_PING_MS})")  # as if quiet so long
            page.wait_for_timeout(100)
        assert pings >= 10  # each pong starts the quiet time again
        deadline = time.monotonic() + 20 * UNIT
        while stored(server, channel) < 60 and not page.evaluate("window.errors"):
            assert time.monotonic() < deadline, stored(server, channel)
            time.sleep(0.2)
        assert page.evaluate("window.errors") == []
        assert stored(server, channel) == 60
    finally:
        server.stop()


def test_a_connection_whose_pings_go_unanswered_is_given_up(
        page: Page, live: Server, own_site: Callable[[str, str], str]) -> None:
    """No pong in time after a ping: the shim gives the connection up and opens another, since
    a dead connection's close can take minutes to show. The wait starts when the ping is sent,
    not when it was due (it may wait for the rate limit). The connection goes dead as the ping
    leaves: nothing arrives after it (any frame would prove it alive, such as the count frame
    that can follow the welcome, which made this test fail when it came after the ping)."""
    script = f"""{TIMER_LEDGER}
var nativeSend = WebSocket.prototype.send;
var onmessage = Object.getOwnPropertyDescriptor(WebSocket.prototype, "onmessage");
Object.defineProperty(WebSocket.prototype, "onmessage", {{
  configurable: true,
  get: onmessage.get,
  set: function (handler) {{
    onmessage.set.call(this, function (event) {{ if (!this.dead) handler.call(this, event); }});
  }}
}});
window.swallowed = 0;
WebSocket.prototype.send = function (data) {{
  if (data === "cmd_ping") {{ window.swallowed += 1; this.dead = true; return; }}  // lost
  return nativeSend.call(this, data);
}};
window.opens = 0;
window.closes = [];
var ws = new c8PlayerApi.webSocket();
ws.onOpen = function () {{ window.opens += 1; document.title = "opened " + window.opens; }};
ws.onClose = function (event) {{ window.closes.push(event.willReconnect); }};"""
    page.goto(own_site("deaf.html", page_with(live, f"{{channel: '{fresh('deaf')}'}}", script)))
    expect(page).to_have_title("opened 1")
    assert page.evaluate(f"window.fireTimers({IDLE_PING_MS})") == 1  # quiet for that long
    assert page.evaluate("[window.swallowed, window.closes]") == [1, []]
    assert page.evaluate(f"window.fireTimers({PONG_TIMEOUT_MS})") == 1  # and no pong since
    expect(page).to_have_title("opened 2")
    assert page.evaluate("window.closes") == [True]


def test_the_count_is_told_after_open_and_then_on_changes_only(
        page: Page, live: Server, own_site: Callable[[str, str], str]) -> None:
    """onActiveConnectionsChange: the count once after onOpen, then each change, never the
    same number twice in a row (the server's count frame after a welcome repeated it)."""
    script = """window.seen = {a: [], b: []};
function watch(name) {
  var ws = new c8PlayerApi.webSocket();
  ws.onActiveConnectionsChange = function (event) { window.seen[name].push(event.data); };
  return ws;
}
var a = watch("a");
a.onOpen = function () { watch("b").onOpen = function () { document.title = "both open"; }; };"""
    page.goto(own_site("count.html", page_with(live, f"{{channel: '{fresh('cnt')}'}}", script)))
    expect(page).to_have_title("both open")
    page.wait_for_function("window.seen.a.length >= 2 && window.seen.b.length >= 1")
    page.wait_for_timeout(1500)  # past the server's next count frames, which must add nothing
    assert page.evaluate("window.seen") == {"a": [1, 2], "b": [2]}


def test_a_server_that_cannot_be_reached_is_said_once_per_outage(
        page: Page, live: Server, own_site: Callable[[str, str], str]) -> None:
    """Attempts that fail before the server answers (1006) give onError `unreachable` once,
    however many there are, and again after the next connection drops, until the widget closes
    its socket; a widget used to hear nothing while its server was down."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    channel = fresh("down")
    script = f"""{TIMER_LEDGER}
var Native = window.WebSocket;
window.down = true;
window.attempts = 0;
window.WebSocket = function (url) {{
  window.attempts += 1;
  return new Native(window.down ? url.replace(/^ws:\\/\\/[^/]+/, "ws://127.0.0.1:{dead}") : url);
}};
window.WebSocket.prototype = Native.prototype;
window.errors = [];
var ws = new c8PlayerApi.webSocket();
window.ws = ws;
ws.onError = function (error) {{ window.errors.push(error.code); }};
ws.onOpen = function () {{ document.title = "open as " + ws.clientId; }};"""
    page.goto(own_site("down.html", page_with(live, f"{{channel: '{channel}'}}", script)))
    for attempts in (2, 3, 4):
        page.wait_for_function("window.ws.state === 'waiting'")
        page.evaluate("c8PlayerApi.reconnectNow()")
        page.wait_for_function(f"window.attempts >= {attempts} && window.ws.state === 'waiting'")
    assert page.evaluate("window.errors") == ["unreachable"]

    page.evaluate("window.down = false; c8PlayerApi.reconnectNow()")
    expect(page).to_have_title(re.compile(r"^open as \w+$"), timeout=10_000 * UNIT)
    client_id = page.title().removeprefix("open as ")
    page.evaluate("window.down = true")
    status, _, _ = Client(live.http).request(
        "POST", f"/api/channels/{channel}/members/{client_id}/disconnect",
        headers={"X-Api-Secret": live.secret})
    assert status == 200
    page.wait_for_function("window.errors.length === 2", timeout=15_000 * UNIT)
    tried = page.evaluate("window.attempts")
    for attempts in (tried + 1, tried + 2):  # more failed attempts in this outage: silent
        page.wait_for_function("window.ws.state === 'waiting'")
        page.evaluate("c8PlayerApi.reconnectNow()")
        page.wait_for_function(f"window.attempts >= {attempts} && window.ws.state === 'waiting'")
    assert page.evaluate("window.errors") == ["unreachable", "unreachable"]

    # Closed by the widget during the outage: closed for good, and nothing more said or tried.
    page.evaluate("""window.closes = [];
ws.onClose = function (event) { window.closes.push(event.willReconnect); };
ws.close();
c8PlayerApi.reconnectNow();""")
    page.wait_for_function("window.ws.state === 'closed'")
    tried = page.evaluate("window.attempts")
    for _ in range(2):  # what a fired timer sets up, too: as if any backoff had run out
        page.evaluate("window.fireTimers()")
        page.wait_for_timeout(200)
    assert page.evaluate("[window.errors, window.closes, window.attempts]") == [
        ["unreachable", "unreachable"], [False], tried]


def test_a_server_that_cannot_reach_its_redis_is_said_once_per_outage(
        page: Page, own_site: Callable[[str, str], str], tmp_path: Path) -> None:
    """Joins turned away with 1013 while the server's Redis is down give onError `unreachable`
    once, with the server's reason and the close code, and the widget opens once Redis is back
    (it used to wait in silence)."""
    require_redis_server()
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis").start()
    server = Server(tmp_path / "data", {"C8WS_BROKER_URL": redis.url}).start()
    try:
        redis.stop()
        script = """var Native = window.WebSocket;
window.attempts = 0;
window.WebSocket = function (url) { window.attempts += 1; return new Native(url); };
window.WebSocket.prototype = Native.prototype;
window.errors = [];
var ws = new c8PlayerApi.webSocket();
window.ws = ws;
ws.onError = function (error) { window.errors.push([error.code, error.closeCode, error.message]); };
ws.onOpen = function () { document.title = "open"; };"""
        page.goto(own_site("nobroker.html", page_with(server, "{channel: 'nobroker'}", script)))
        for attempts in (2, 3, 4):  # refused again and again: said once
            page.wait_for_function("window.ws.state === 'waiting'", timeout=15_000 * UNIT)
            page.evaluate("c8PlayerApi.reconnectNow()")
            page.wait_for_function(
                f"window.attempts >= {attempts} && window.ws.state === 'waiting'",
                timeout=15_000 * UNIT)
        [(code, close_code, message)] = page.evaluate("window.errors")
        assert (code, close_code) == ("unreachable", 1013)
        assert "broker" in message and message.endswith("trying again.")
        redis.start()
        deadline = time.monotonic() + 20 * UNIT
        while page.title() != "open":  # an attempt may still meet the broker reconnecting
            assert time.monotonic() < deadline, page.evaluate("window.errors")
            page.evaluate("c8PlayerApi.reconnectNow()")
            page.wait_for_timeout(200)
        assert len(page.evaluate("window.errors")) == 1
    finally:
        server.stop()
        redis.stop()
