"""Replaying a recorded chat into a fresh viewer from the playground."""

from __future__ import annotations

from pages import Playground, fresh
from playwright.sync_api import Page, expect

from tests.live import Server


def sign_in(page: Page, live: Server) -> None:
    page.goto(f"{live.http}/signin?next=/playground")
    page.fill("input[name=secret]", live.secret)
    page.get_by_role("button", name="Sign in").click()


def test_replay_at_10x_into_a_new_viewer(page: Page, live: Server) -> None:
    """A recorded chat replays at 10x into a replay viewer, in order and under the original
    usernames, while the live viewers see nothing twice."""
    sign_in(page, live)
    playground = Playground(page, live.http).open("chat")
    alice, bob = playground.widget("alice"), playground.widget("bob")
    lines = [fresh("line") for _ in range(4)]
    for index, line in enumerate(lines):
        speaker = alice if index % 2 == 0 else bob
        speaker.locator("#text").fill(line)
        speaker.get_by_role("button", name="Send").click()
        expect(bob.locator("#messages li").last).to_contain_text(line)
    expected = [("alice" if i % 2 == 0 else "bob") + line for i, line in enumerate(lines)]

    page.select_option("#replay-speed", "10")
    page.get_by_role("button", name="Start replay").click()
    expect(page.locator("#replay-position")).to_contain_text("0 / 4")
    replay = playground.card("replay")
    expect(replay.locator(".status")).to_have_text("open")
    page.get_by_role("button", name="Play", exact=True).click()
    expect(playground.widget("replay").locator("#messages li")).to_have_text(expected)
    expect(page.locator("#replay-position")).to_contain_text("4 / 4 · done")
    for widget in (alice, bob):
        expect(widget.locator("#messages li")).to_have_text(expected)
