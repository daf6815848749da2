"""The operator pages: live connections (pushed, per channel, with disconnect) and history
(filters, groupBy, export), with hostile usernames and data shown as inert text."""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

import jwt
import pytest
from pages import README_IMAGES, fresh
from playwright.sync_api import Page, expect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.live import UNIT, Server

XSS_NAME = '<img src=x onerror="window.__xss=1">'
XSS_DATA = {"vote": "yes", "note": "<script>window.__xss=2</script><b>bold?</b>"}


def sign_in(page: Page, live: Server, target: str) -> None:
    page.goto(f"{live.http}/signin?next={target}")
    page.fill("input[name=secret]", live.secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live.http}{target}")


def token(live: Server, channel: str, username: str) -> str:
    claims = {"sub": channel, "exp": int(time.time()) + 600, "username": username}
    return jwt.encode(claims, live.secret, algorithm="HS256")


def member(live: Server, channel: str, *, username: str | None = None,
           persistent: bool = False) -> ClientConnection:
    query = f"api_key=demo&client_id={fresh('m')}"
    if username:
        query += f"&jwt={token(live, channel, username)}"
    if persistent:
        query += "&persistent=1"
    return connect(f"ws://127.0.0.1:{live.port}/c8/{channel}?{query}",
                   open_timeout=10 * UNIT)


def test_connections_view_follows_joins_and_leaves(page: Page, live: Server) -> None:
    """A member shows in its channel's row within a second of joining and goes when it leaves;
    its hostile username is shown as text."""
    sign_in(page, live, "/connections")
    expect(page.locator("#live-status")).to_have_text("live")
    channel = fresh("conn")
    row = page.locator(f'tr.channel[data-channel="{channel}"]')
    with member(live, channel, username=XSS_NAME):
        expect(row.locator("td").nth(2)).to_have_text("1", timeout=1000 * UNIT)
        with member(live, channel):
            expect(row.locator("td").nth(2)).to_have_text("2", timeout=1000 * UNIT)
        expect(row.locator("td").nth(2)).to_have_text("1", timeout=1000 * UNIT)
        row.get_by_role("button").first.click()
        members = page.locator("tr.members:visible tbody tr")
        expect(members).to_have_count(1)
        expect(members.first).to_contain_text(XSS_NAME)
    expect(row).to_have_count(0, timeout=1000 * UNIT)
    assert page.evaluate("window.__xss") is None


def test_connections_view_as_the_readme_shows_it(page: Page, live: Server) -> None:
    """Two busy channels, one expanded: each row counts its members, the expanded one lists
    them by name (the README's screenshot)."""
    poll, chat = fresh("poll"), fresh("chat")
    with contextlib.ExitStack() as stack:
        voters = [stack.enter_context(member(live, poll, username=name, persistent=True))
                  for name in ("alice", "bob", "carol")]
        for name in ("dave", "erin"):
            stack.enter_context(member(live, chat, username=name))
        sign_in(page, live, "/connections")
        poll_row = page.locator(f'tr.channel[data-channel="{poll}"]')
        expect(poll_row.locator("td").nth(2)).to_have_text("3", timeout=1000 * UNIT)
        expect(page.locator(f'tr.channel[data-channel="{chat}"] td').nth(2)).to_have_text(
            "2", timeout=1000 * UNIT)
        for number in range(30):  # after the row is known, so its rate counts them
            voters[number % 3].send(json.dumps({"publish": {"data": {"vote": number % 2}}}))
        expect(poll_row.locator("td").nth(3)).to_have_text(re.compile(r"^[1-9]\d*\.\d$"),
                                                           timeout=5000 * UNIT)
        poll_row.get_by_role("button").first.click()
        members = page.locator("tr.members:visible tbody tr")
        expect(members).to_have_count(3)
        for name in ("alice", "bob", "carol"):
            expect(page.locator("tr.members:visible")).to_contain_text(name)
        page.screenshot(path=str(README_IMAGES / "connections.png"), full_page=True)


def test_disconnect_from_the_page_closes_with_4000(page: Page, live: Server) -> None:
    """The Disconnect button closes that member with 4000 "disconnected by an operator", and
    the page says so above the table, where it stays after the member's row has gone (the list
    is fetched again once the count changes). The channel's other member stays."""
    sign_in(page, live, "/connections")
    channel = fresh("kick")
    with member(live, channel) as client, member(live, channel) as other:
        client_id = json.loads(client.recv(timeout=5 * UNIT))["welcome"]["client_id"]
        other.recv(timeout=5 * UNIT)
        row = page.locator(f'tr.channel[data-channel="{channel}"]')
        expect(row.locator("td").nth(2)).to_have_text("2")
        row.get_by_role("button").first.click()
        kicked = page.locator(f'tr.members:visible tr[data-client="{client_id}"]')
        kicked.get_by_role("button", name="Disconnect").click()
        expect(page.get_by_role("status")).to_have_text(
            f"Disconnected {client_id} from {channel} (close code 4000).")
        code = None
        try:
            while True:
                client.recv(timeout=5 * UNIT)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
        assert code == 4000
        other.send(json.dumps({"publish": {"data": "still here", "rid": "s"}}))
        while '"reply"' not in (frame := other.recv(timeout=5 * UNIT)):
            pass  # counts meanwhile
        assert "still here" in frame
        expect(kicked).to_have_count(0)
        expect(row.locator("td").nth(2)).to_have_text("1")
    expect(row).to_have_count(0, timeout=2000 * UNIT)
    expect(page.get_by_role("status")).to_contain_text(f"Disconnected {client_id}")


def test_history_filters_groups_and_exports(page: Page, live: Server) -> None:
    """A filter returns exactly the matching rows, groupBy charts the counts, the export link
    carries the filter; hostile data stays text."""
    channel = fresh("hist")
    votes = ["yes", "no", "yes", "maybe", "yes"]
    with member(live, channel, persistent=True, username=XSS_NAME) as client:
        client.recv(timeout=5 * UNIT)
        for index, vote in enumerate(votes):
            data = XSS_DATA if index == 0 else {"vote": vote, "n": index}
            client.send(json.dumps({"publish": {"data": data, "rid": f"r{index}"}}))
        replies = 0
        while replies < len(votes):
            if "reply" in json.loads(client.recv(timeout=5 * UNIT)):
                replies += 1
    sign_in(page, live, f"/history/{channel}")
    expect(page.locator("#records tbody tr")).to_have_count(5)
    page.get_by_role("button", name="+ Filter").click()
    page.locator(".filter .field").fill("data.vote")
    page.locator(".filter .value").fill('"yes"')
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#records tbody tr")).to_have_count(3)
    expect(page.locator("#summary")).to_have_text("1\u20133 of 3")
    expect(page.locator("#records")).to_contain_text("<b>bold?</b>")
    assert "filters=" in (page.locator("#export-csv").get_attribute("href") or "")
    with page.expect_download() as download:
        page.locator("#export-ndjson").click()
    lines = Path(download.value.path()).read_text(encoding="utf-8").strip().splitlines()
    assert [json.loads(line)["data"]["vote"] for line in lines] == ["yes", "yes", "yes"]
    page.fill("#sort-field", "data..vote")  # refused: the error, and nothing of the last page
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#error")).to_contain_text("unknown field 'data..vote'")
    expect(page.locator("#records tbody tr")).to_have_count(0)
    expect(page.locator("#summary")).to_have_text("")
    expect(page.locator("#next")).to_be_disabled()
    page.fill("#sort-field", "created")
    page.locator(".filter button").click()
    page.fill("#group-by", "data.vote")
    page.get_by_role("button", name="Chart").click()
    rows = page.locator("#chart .row")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text('"yes"3')
    assert page.evaluate("window.__xss") is None


@pytest.mark.parametrize("target", ["/connections", "/history/anything"])
def test_every_signed_in_page_signs_out(page: Page, live: Server, target: str) -> None:
    """The operator pages have the playground's Sign out too; after it they ask to sign in."""
    sign_in(page, live, target)
    expect(page.locator(".account")).to_contain_text("signed in as demo")
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator(".account")).to_have_text("Sign in to save widgets")
    page.goto(f"{live.http}{target}")
    expect(page).to_have_url(re.compile(r"/signin\?next="))
