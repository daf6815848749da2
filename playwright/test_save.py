"""Saving widgets from the playground: only when signed in, and what is saved is what reloads."""

from __future__ import annotations

import re
import subprocess
import sys

from pages import Playground, fresh
from playwright.sync_api import Page, expect

from tests.live import Server

SIGNIN_LINK = re.compile(r"/signin\?token=(\S+)")
ORANGE = "#e8590c"


def test_saved_widget_keeps_its_new_colour_after_a_reload(page: Page, live: Server) -> None:
    """Signed in with the one-time link, a poll saved with a new bar colour is listed as saved
    and still has that colour after the page is reloaded."""
    link = SIGNIN_LINK.search(live.log())
    assert link, live.log()
    page.goto(f"{live.http}/signin?token={link.group(1)}")
    expect(page).to_have_url(re.compile(r"/playground(#.*)?$"))
    expect(page.locator(".account")).to_contain_text("signed in as demo")
    assert live.secret and live.secret not in page.content()

    playground = Playground(page, live.http).pick("poll")
    page.get_by_role("tab", name="CSS").click()
    css = playground.code("css")
    assert "--bar: #4c6ef5" in css
    playground.set_code("css", css.replace("--bar: #4c6ef5", f"--bar: {ORANGE}"))
    widget_id = playground.save_as("Orange poll", "poll")

    page.reload()
    entry = page.locator("#widget-list li").filter(
        has=page.get_by_role("button", name="Orange poll"))
    expect(entry.locator(".tag")).to_have_text("saved")
    playground.pick(widget_id)
    assert f"--bar: {ORANGE}" in playground.code("css")
    alice = playground.widget("alice")
    alice.get_by_role("button", name="Green").click()
    expect(alice.locator('.row[data-vote="green"] .bar')).to_have_css(
        "background-color", "rgb(232, 89, 12)")


def test_save_needs_sign_in(page: Page, live: Server) -> None:
    """Without signing in, Save says "Sign in to save widgets." and nothing is saved."""
    Playground(page, live.http).open("poll")
    widget_id = fresh("poll")
    page.fill("#widget-id", widget_id)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#notice")).to_have_text("Sign in to save widgets.")
    expect(page.locator("#notice")).to_have_class("error")
    expect(page.locator(f'#widget-list button[data-widget="{widget_id}"]')).to_have_count(0)
    response = page.request.get(f"{live.http}/api/widgets/{widget_id}",
                                headers={"X-Api-Key": "demo"})
    assert response.status == 404


def test_another_apps_playground_runs_and_saves_its_own_widgets(page: Page, live: Server) -> None:
    """Signed in with another app's secret, the viewers connect with that app's key (their
    tokens signed by it), and a saved widget is listed for that app and not for demo."""
    name = fresh("quiz")
    created = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--name", name, "--key", name,
         "--data-dir", str(live.data_dir)], capture_output=True, text=True, check=True)
    secret = next(line.split()[-1] for line in created.stdout.splitlines()
                  if line.startswith("secret"))
    page.goto(f"{live.http}/signin")
    page.fill('input[name="secret"]', secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".account")).to_contain_text(f"signed in as {name}")

    playground = Playground(page, live.http).pick("poll")
    playground.widget("alice").get_by_role("button", name="Green").click()
    expect(playground.widget("bob").locator('.row[data-vote="green"] .count')).to_have_text("1")
    channels = page.request.get(f"{live.http}/api/channels").json()["channels"]  # the app's
    assert [c["connections"] for c in channels if c["channel"] == playground.channel] == [2]
    votes = page.request.post(f"{live.http}/api/channels/{playground.channel}/search",
                              headers={"X-Api-Key": name}, data={}).json()
    assert [vote["username"] for vote in votes["items"]] == ["alice"]
    widget_id = playground.save_as("Quiz poll", "poll")
    page.reload()
    expect(page.locator(f'#widget-list button[data-widget="{widget_id}"]')).to_have_count(1)
    assert page.request.get(f"{live.http}/api/widgets/{widget_id}",
                            headers={"X-Api-Key": "demo"}).status == 404
