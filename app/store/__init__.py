"""Choose the store by URL scheme; the only place that names a concrete store."""

from __future__ import annotations

from app.errors import ConfigError
from app.store.base import CommitObserver, Store


def create_store(url: str, commit_interval_ms: float = 0.0,
                 on_commit: CommitObserver | None = None) -> Store:
    """`sqlite:///path/to/file` (the default); other schemes are refused with a clear message."""
    if url.startswith("sqlite:///"):
        from app.store.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"), commit_interval_ms, on_commit)
    raise ConfigError(f"C8WS_DATABASE_URL: unsupported store {url!r}; use sqlite:///PATH")
