"""Widgets: the built-in samples shipped in static/samples/ and the app's saved ones, which
shadow a sample of the same id."""

from __future__ import annotations

import functools
from typing import Any

import orjson

from app.config import STATIC_DIR
from app.store.base import Store, Widget

SAMPLES_DIR = STATIC_DIR / "samples"


@functools.cache
def builtin_widgets() -> dict[str, Widget]:
    """The samples listed in static/samples/index.json, read once."""
    index = orjson.loads((SAMPLES_DIR / "index.json").read_bytes())
    samples = {}
    for entry in index:
        folder = SAMPLES_DIR / entry["id"]
        samples[entry["id"]] = Widget(
            id=entry["id"], name=entry["name"],
            html=(folder / "widget.html").read_text(), css=(folder / "widget.css").read_text(),
            js=(folder / "widget.js").read_text(),
        )
    return samples


def describe(widget: Widget, builtin: bool) -> dict[str, Any]:
    return {"id": widget.id, "name": widget.name, "builtin": builtin, "updated": widget.updated}


def source(widget: Widget, builtin: bool) -> dict[str, Any]:
    return {**describe(widget, builtin), "html": widget.html, "css": widget.css, "js": widget.js}


async def list_widgets(store: Store, app: str) -> list[dict[str, Any]]:
    """Samples first (unless saved over), then saved widgets."""
    saved = await store.list_widgets(app)
    saved_ids = {widget.id for widget in saved}
    samples = [describe(w, True) for w in builtin_widgets().values() if w.id not in saved_ids]
    return samples + [describe(widget, False) for widget in saved]


async def find_widget(store: Store, app: str, widget_id: str) -> tuple[Widget, bool] | None:
    """A saved widget, else the sample of that id; with whether it is a sample."""
    saved = await store.get_widget(app, widget_id)
    if saved is not None:
        return saved, False
    sample = builtin_widgets().get(widget_id)
    return (sample, True) if sample is not None else None
