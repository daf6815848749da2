"""Choose the store by URL scheme; the only place that names a concrete store."""

from __future__ import annotations

from app.errors import ConfigError
from app.store.base import CommitObserver, Store


def create_store(url: str, commit_interval_ms: float = 0.0,
                 on_commit: CommitObserver | None = None) -> Store:
    """`sqlite:///path/to/file` (the default) or `postgresql://user@host:port/db` (also
    `postgres://`); other schemes are refused with a clear message. Drivers import lazily."""
    if url.startswith("sqlite:///"):
        from app.store.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"), commit_interval_ms, on_commit)
    if url.startswith(("postgresql://", "postgres://")):
        from app.store.postgres import PostgresStore

        return PostgresStore(url, commit_interval_ms, on_commit)
    raise ConfigError(f"C8WS_DATABASE_URL: unsupported store {url!r}; "
                      "use sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
