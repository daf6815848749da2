"""The shared store for many nodes: PostgreSQL through asyncpg, each record's data as JSONB.

Appends go through one group-commit task on a connection of its own, exactly like the SQLite
store; reads and app/widget writes use a pool, so a search never waits for a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from app.errors import NotStored, StoreError
from app.query import POSTGRES, RANGE_COLUMNS, Statement, compile_where, stored_record
from app.records import Record, now_ms
from app.store.base import App, CommitObserver, Store, Widget, app_from_row, migrations
from app.store.batching import GroupCommit
from app.store.search import SearchCounts, run_plan_async

log = logging.getLogger(__name__)

_INSERT = (
    "INSERT INTO records (app, channel, seq, id, client_id, created, username, data, text) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9)"
)
_COUNT = (
    "INSERT INTO channel_counts (app, channel, records) VALUES ($1, $2, $3) "
    "ON CONFLICT (app, channel) DO UPDATE SET records = channel_counts.records + excluded.records"
)
_APP_COLUMNS = "id, name, key, secret, created, settings"
_WIDGET_COLUMNS = "id, name, html, css, js, updated"
_MIGRATION_LOCK = 0x63387773  # any constant: nodes starting together migrate one at a time
_TIMEOUT = 30.0  # seconds for a connection attempt or a statement before it is given up
_POOL_SIZE = 10
_DRIVER_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
# An escaped U+0000 in orjson's output: "\u0000" after an even run of backslashes.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    user = parts.username
    return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host))


def _row(record: Record) -> tuple[Any, ...]:
    """The INSERT parameters, or `NotStored` for what PostgreSQL cannot hold: U+0000 in text or
    in a JSON string (SQLite stores both)."""
    data = orjson.dumps(record.data)
    if b"\\u0000" in data and _NUL_ESCAPE.search(data):
        raise NotStored("record not stored: PostgreSQL cannot store U+0000 in JSON strings")
    texts = (record.app, record.channel, record.id, record.client_id, record.username, record.text)
    if any(text and "\x00" in text for text in texts):
        raise NotStored("record not stored: PostgreSQL cannot store U+0000 in text")
    return (record.app, record.channel, record.seq, record.id, record.client_id, record.created,
            record.username, data.decode(), record.text)


class PostgresStore(Store):
    """Appends are queued and committed by one task, many per transaction.

    The URL is asyncpg's (`postgresql://user:password@host:port/db`); other query parameters
    become server settings, so `?search_path=tenant` keeps the tables in schema `tenant`.
    When the engine is unreachable, `open` and the reads raise `StoreError`, appends `NotStored`.
    A connection lost during COMMIT leaves the outcome unknown: the batch is reported NotStored
    although it may have committed.

    Searches answer exactly as SQLite's do (one compiler, `app.query`); what differs is what
    JSONB keeps of `data`: object keys come back in JSONB's order (shorter first), `-0.0` as
    `0.0`, exponent numbers as plain digits (orjson writes floats from 1e16 up as `1e16`, which
    returns as an integer), and objects differing only in key order group together. U+0000 is
    refused (`NotStored`); integers past 64 bits stay exact where SQLite turns them into floats.
    """

    def __init__(self, url: str, commit_interval_ms: float = 0.0,
                 on_commit: CommitObserver | None = None) -> None:
        self._url = url
        self._commits: GroupCommit[tuple[Any, ...]] = GroupCommit(
            self._write_batch, _row, "postgres-commits", commit_interval_ms / 1000, on_commit)
        self._pool: asyncpg.Pool | None = None
        self._writer: asyncpg.Pool | None = None
        self._counts = SearchCounts(POSTGRES)

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._url, min_size=1, max_size=_POOL_SIZE, timeout=_TIMEOUT,
                command_timeout=_TIMEOUT)
            # The committer's own pool of one: it reconnects after a failure, and a burst of
            # searches never makes a batch wait for a connection.
            self._writer = await asyncpg.create_pool(
                self._url, min_size=1, max_size=1, timeout=_TIMEOUT, command_timeout=_TIMEOUT)
            await self._migrate(self._pool)
        except _DRIVER_ERRORS as error:
            await self._close_pools()
            raise StoreError(f"PostgreSQL at {_redacted(self._url)}: {error}") from None
        self._commits.start()

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as db:
            await db.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
            try:
                await db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, applied BIGINT NOT NULL)"
                )
                rows = await db.fetch("SELECT version FROM schema_migrations")
                applied = {row[0] for row in rows}
                for number, sql in migrations("postgres"):
                    if number not in applied:
                        log.info("applying migration %04d", number)
                        async with db.transaction():
                            await db.execute(sql)
                            await db.execute("INSERT INTO schema_migrations VALUES ($1, $2)",
                                             number, now_ms())
            finally:
                await db.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)

    async def close(self) -> None:
        await self._commits.close()
        await self._close_pools()

    async def _close_pools(self) -> None:
        for pool in (self._pool, self._writer):
            if pool is not None:
                await pool.close()
        self._pool = self._writer = None

    @property
    def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return list(await self._db.fetch(sql, *args))
        except _DRIVER_ERRORS as error:
            raise StoreError(f"PostgreSQL: {error}") from None

    async def _execute(self, sql: str, *args: Any) -> str:
        try:
            return str(await self._db.execute(sql, *args))
        except asyncpg.UniqueViolationError:
            raise
        except _DRIVER_ERRORS as error:
            raise StoreError(f"PostgreSQL: {error}") from None

    # apps -------------------------------------------------------------------------------------

    async def create_app(self, name: str, key: str, secret: str) -> App:
        app = App(id=name, name=name, key=key, secret=secret, created=now_ms())
        try:
            await self._execute(
                f"INSERT INTO apps ({_APP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, '{{}}')",
                app.id, app.name, app.key, app.secret, app.created,
            )
        except asyncpg.UniqueViolationError as error:
            raise StoreError(f"an app with this name or key exists already ({error})") from None
        return app

    async def set_app_secret(self, app_id: str, secret: str) -> None:
        await self._execute("UPDATE apps SET secret = $1 WHERE id = $2", secret, app_id)

    async def set_app_settings(self, app_id: str, settings: dict[str, Any]) -> None:
        await self._execute("UPDATE apps SET settings = $1::jsonb WHERE id = $2",
                            orjson.dumps(settings).decode(), app_id)

    async def _one_app(self, where: str, value: str) -> App | None:
        rows = await self._fetch(f"SELECT {_APP_COLUMNS} FROM apps WHERE {where} = $1", value)
        return app_from_row(rows[0]) if rows else None

    async def app_by_key(self, key: str) -> App | None:
        return await self._one_app("key", key)

    async def app_by_name(self, name: str) -> App | None:
        return await self._one_app("name", name)

    async def list_apps(self) -> list[App]:
        rows = await self._fetch(
            f'SELECT {_APP_COLUMNS} FROM apps ORDER BY created, name COLLATE "C"')
        return [app_from_row(row) for row in rows]

    # records ----------------------------------------------------------------------------------

    def append_record(self, record: Record) -> asyncio.Future[None]:
        return self._commits.append(record)

    async def _write_batch(self, rows: list[tuple[Any, ...]]) -> None:
        """One transaction for the batch on the committer's own connection."""
        if self._writer is None:
            raise StoreError("store is not open")
        async with self._writer.acquire() as db, db.transaction():
            await db.executemany(_INSERT, rows)
            await db.executemany(_COUNT, _channel_counts(rows))

    async def last_seq(self, app: str, channel: str) -> int:
        rows = await self._fetch(
            "SELECT MAX(seq) FROM records WHERE app = $1 AND channel = $2", app, channel)
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    async def read_range(self, app: str, channel: str, after_seq: int, limit: int,
                         filters: list[dict[str, Any]] | None = None) -> list[Record]:
        where_sql, params = compile_where(app, channel, filters or [], POSTGRES)
        after, most = (POSTGRES.placeholder(len(params) + n) for n in (1, 2))
        rows = await self._fetch(
            f"SELECT {RANGE_COLUMNS} FROM records "
            f"WHERE {where_sql} AND seq > {after} ORDER BY seq LIMIT {most}",
            *params, after_seq, limit,
        )
        return [stored_record(app, channel, row) for row in rows]

    async def search_records(self, app: str, channel: str, query: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._snapshot() as fetch:
                return await run_plan_async(self._counts.plan(app, channel, query), fetch)
        except _DRIVER_ERRORS as error:
            raise StoreError(f"PostgreSQL: {error}") from None

    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[Callable[[Statement], Awaitable[list[Any]]]]:
        """One repeatable-read transaction: its statements see one snapshot."""
        async with self._db.acquire() as db, db.transaction(isolation="repeatable_read",
                                                            readonly=True):
            async def fetch(statement: Statement) -> list[Any]:
                return list(await db.fetch(statement.sql, *statement.params))

            yield fetch

    # widgets ----------------------------------------------------------------------------------

    async def list_widgets(self, app: str) -> list[Widget]:
        rows = await self._fetch(
            f'SELECT {_WIDGET_COLUMNS} FROM widgets WHERE app = $1 '
            f'ORDER BY name COLLATE "C", id COLLATE "C"', app)
        return [Widget(*row) for row in rows]

    async def get_widget(self, app: str, widget_id: str) -> Widget | None:
        rows = await self._fetch(
            f"SELECT {_WIDGET_COLUMNS} FROM widgets WHERE app = $1 AND id = $2", app, widget_id)
        return Widget(*rows[0]) if rows else None

    async def save_widget(self, app: str, widget: Widget) -> Widget:
        saved = Widget(widget.id, widget.name, widget.html, widget.css, widget.js, now_ms())
        await self._execute(
            f"INSERT INTO widgets (app, {_WIDGET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (app, id) DO UPDATE SET name = EXCLUDED.name, html = EXCLUDED.html, "
            "css = EXCLUDED.css, js = EXCLUDED.js, updated = EXCLUDED.updated",
            app, saved.id, saved.name, saved.html, saved.css, saved.js, saved.updated,
        )
        return saved

    async def delete_widget(self, app: str, widget_id: str) -> bool:
        status = await self._execute(
            "DELETE FROM widgets WHERE app = $1 AND id = $2", app, widget_id)
        return status.rsplit(" ", 1)[-1] != "0"


def _channel_counts(rows: Sequence[Sequence[Any]]) -> list[tuple[str, str, int]]:
    """How many of `rows` (app and channel first) each channel gets, for raising the stored
    per-channel counts once per batch; channels in one order, so two writers raising the same
    counts never deadlock."""
    return [(app, channel, n) for (app, channel), n
            in sorted(Counter((row[0], row[1]) for row in rows).items())]
