"""The playground as the browser tests drive it: open a widget on a fresh channel, reach each
viewer's card and widget frame, replace the editor's code, and wait on what the page shows."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

from playwright.sync_api import FrameLocator, Locator, Page, expect

ARTIFACTS = Path(__file__).parent / "artifacts"
"""Screenshots: the ones the tests take, and one of every page when a test fails."""
README_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
"""Screenshots the README shows, retaken by every browser test run so they stay current."""

# A viewer's widget may take a full reconnect backoff (the shim caps it at 10 s) to come back.
RECONNECT_TIMEOUT_MS = 15_000


def fresh(prefix: str) -> str:
    """A name no other test uses: a channel, a widget id, a message."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Playground:
    """One playground page; viewers are named by the playground (alice, bob, carol, …)."""

    def __init__(self, page: Page, base: str) -> None:
        self.page = page
        self.base = base
        self.channel = ""

    def open(self, widget: str, channel: str | None = None) -> Playground:
        """Load the playground on `widget` with its two viewers, moved to a channel of their own."""
        self.page.goto(f"{self.base}/playground#widget={widget}")
        expect(self.page.locator("article.viewer")).to_have_count(2)
        self._opened(widget, channel)
        return self

    def pick(self, widget: str, channel: str | None = None) -> Playground:
        """Open `widget` from the list in the page already loaded, on a channel of its own."""
        expect(self.page.locator("article.viewer")).not_to_have_count(0)
        self.page.locator(f'#widget-list button[data-widget="{widget}"]').click()
        self._opened(widget, channel)
        return self

    def _opened(self, widget: str, channel: str | None) -> None:
        expect(self.page.locator(f'#widget-list button[data-widget="{widget}"]')).to_have_class(
            "current")
        expect(self.page.locator("#widget-id")).to_have_value(widget)
        self.use_channel(channel or fresh("ch"))

    def use_channel(self, channel: str) -> None:
        self.channel = channel
        field = self.page.locator("#channel")
        field.fill(channel)
        field.blur()  # commits it: the change event reloads every viewer, once
        self.wait_open()

    def names(self) -> list[str]:
        return [card.get_attribute("data-viewer") or ""
                for card in self.page.locator("article.viewer").all()]

    def card(self, name: str) -> Locator:
        return self.page.locator(f'article.viewer[data-viewer="{name}"]')

    def widget(self, name: str) -> FrameLocator:
        """The inside of a viewer's sandboxed widget frame."""
        return self.page.frame_locator(f'article.viewer[data-viewer="{name}"] iframe')

    def status(self, name: str) -> Locator:
        return self.card(name).locator(".status")

    def console(self, name: str) -> Locator:
        return self.card(name).locator("ol.console")

    def wait_loaded(self, *names: str) -> None:
        """Each viewer (all by default) has one widget frame, configured for this channel."""
        channel = re.compile(re.escape(f'"channel":{json.dumps(self.channel)}'))
        for name in names or self.names():
            expect(self.card(name).locator("iframe")).to_have_count(1)
            expect(self.card(name).locator("iframe")).to_have_attribute("srcdoc", channel)

    def wait_open(self, *names: str) -> None:
        """Each viewer (all by default) runs one widget on this channel with its socket open."""
        for name in names or self.names():
            self.wait_loaded(name)
            expect(self.status(name)).to_have_text("open")

    def add_viewer(self, name: str) -> None:
        """Click "+ Add viewer"; the playground names the new viewer `name`."""
        self.page.get_by_role("button", name="+ Add viewer").click()
        self.wait_open(name)

    def reload_all(self, opening: Sequence[str] | None = None) -> None:
        """Click "▶ Run / reload all"; wait until every viewer has a new frame and those in
        `opening` (all by default) have their socket open again."""
        for frame in self.page.locator("article.viewer iframe").all():
            frame.evaluate("frame => { frame.dataset.stale = '1'; }")
        self.page.get_by_role("button", name="▶ Run / reload all").click()
        expect(self.page.locator("article.viewer iframe[data-stale]")).to_have_count(0)
        self.wait_loaded()
        for name in self.names() if opening is None else opening:
            self.wait_open(name)

    def set_code(self, kind: str, text: str) -> None:
        """Replace the source in one editor pane: "html", "css" or "js"."""
        self.page.evaluate(
            "([kind, text]) => document.querySelector(`[data-pane=\"${kind}\"] .CodeMirror`)"
            ".CodeMirror.setValue(text)", [kind, text])

    def code(self, kind: str) -> str:
        value: str = self.page.evaluate(
            "kind => document.querySelector(`[data-pane=\"${kind}\"] .CodeMirror`)"
            ".CodeMirror.getValue()", kind)
        return value

    def save_as(self, name: str, prefix: str) -> str:
        """Save the editor's widget under a fresh id and `name`; returns the id."""
        widget_id = fresh(prefix)
        self.page.fill("#widget-id", widget_id)
        self.page.fill("#widget-name", name)
        self.page.get_by_role("button", name="Save").click()
        expect(self.page.locator("#notice")).to_have_text(f"Saved {name}.")
        return widget_id
