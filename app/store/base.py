"""The Store seam: durable records, search over them, and the apps (keys and secrets).

Two implementations: `sqlite` (embedded, the default) and `postgres` (shared by many nodes).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson

from app.records import Record

CommitObserver = Callable[[int, float], None]
"""Told the size and duration of every committed batch (for metrics)."""


@dataclass(frozen=True)
class App:
    """A tenant: its public api key, its server-side secret and its per-app settings."""

    id: str
    name: str
    key: str
    secret: str
    created: int
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Widget:
    """A widget's source, as the playground edits it."""

    id: str
    name: str
    html: str
    css: str
    js: str
    updated: int = 0


class Store(ABC):
    """Where persistent records, apps and saved widgets live.

    Guarantees every implementation keeps:
    - `append_record`'s future is done only once the record is committed (durable against a
      process crash); records appended on one node commit in the order they were appended. On
      failure the future raises `NotStored` and the record is absent.
    - Reads (`search_records`, `read_range`) see every record whose append has returned and never
      block the event loop; they do not wait for a pending batch.
    - Records are only ever added, never changed.
    - Every implementation gives the same answer to a QUERY: `app.query` compiles it, a store
      only names its dialect. What a JSON engine normalises in `data` is listed by the store.
    - A channel's seqs are unique; appending a taken seq fails its whole batch with `NotStored`.
    """

    @abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abstractmethod
    async def close(self) -> None:
        """Flush pending appends, then disconnect."""

    @abstractmethod
    async def create_app(self, name: str, key: str, secret: str) -> App:
        """Add an app; raises `StoreError` when the name or key is taken."""

    @abstractmethod
    async def set_app_secret(self, app_id: str, secret: str) -> None:
        """Replace an app's secret."""

    @abstractmethod
    async def set_app_settings(self, app_id: str, settings: dict[str, Any]) -> None:
        """Replace an app's settings (its limit overrides and allowed origins)."""

    @abstractmethod
    async def app_by_key(self, key: str) -> App | None:
        """The app owning `key`, if any."""

    @abstractmethod
    async def app_by_name(self, name: str) -> App | None:
        """The app called `name`, if any."""

    @abstractmethod
    async def list_apps(self) -> list[App]:
        """Every app, oldest first."""

    @abstractmethod
    def append_record(self, record: Record) -> asyncio.Future[None]:
        """Queue one record for commit, batched with others appended meanwhile (group commit);
        the future is done once it is committed. It may be shared by the whole batch: wait
        through a done callback or `asyncio.shield`, never cancel it."""

    @abstractmethod
    async def last_seq(self, app: str, channel: str) -> int:
        """The highest stored `seq` of the channel, 0 if none."""

    @abstractmethod
    async def read_range(self, app: str, channel: str, after_seq: int, limit: int,
                         filters: list[dict[str, Any]] | None = None) -> list[Record]:
        """Stored records with `seq > after_seq` that pass the (validated) QUERY `filters`, in
        seq order, at most `limit`."""

    @abstractmethod
    async def search_records(self, app: str, channel: str, query: dict[str, Any]) -> dict[str, Any]:
        """Run a validated QUERY: `{"total", "items"}` or, with groupBy, `{"total", "groups"}`."""

    @abstractmethod
    async def list_widgets(self, app: str) -> list[Widget]:
        """The app's saved widgets, by name."""

    @abstractmethod
    async def get_widget(self, app: str, widget_id: str) -> Widget | None:
        """One saved widget, if any."""

    @abstractmethod
    async def save_widget(self, app: str, widget: Widget) -> Widget:
        """Create or replace a widget; returns it with its `updated` time."""

    @abstractmethod
    async def delete_widget(self, app: str, widget_id: str) -> bool:
        """Remove a widget; False when there was none."""


def migrations(dialect: str) -> list[tuple[int, str]]:
    """A store's numbered migrations (`migrations/<dialect>/NNNN_name.sql`), in order."""
    folder = resources.files("app.store") / "migrations" / dialect
    found = [(int(item.name.split("_", 1)[0]), item.read_text())
             for item in folder.iterdir() if item.name.endswith(".sql")]
    return sorted(found)


def app_from_row(row: Any) -> App:
    """An App from a row of `id, name, key, secret, created, settings` (settings as JSON)."""
    return App(row[0], row[1], row[2], row[3], row[4], orjson.loads(row[5]))
