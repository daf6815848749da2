"""The embedded store: one SQLite file in WAL mode, one writer connection doing group commit, a
reader connection so reads never wait for a batch, and a search connection on a thread of its
own that runs each search whole (one read transaction, one hand-off from the event loop), so its
snapshots never hold back the other reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson

from app.errors import StoreError
from app.protocol import text_of
from app.query import RANGE_COLUMNS, SQLITE, compile_where, stored_record
from app.records import ChannelKey, Record, now_ms
from app.store.base import App, CommitObserver, Store, Widget, app_from_row, migrations
from app.store.batching import GroupCommit
from app.store.search import Plan, SearchCounts, run_plan

log = logging.getLogger(__name__)
T = TypeVar("T")

# Records name their channel by its number in `channels` (migration 0005).
_INSERT = (
    "INSERT INTO records (channel_id, seq, id, client_id, created, username, data, text) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# RANGE_COLUMNS, with the frame that a NULL `text` stands for (see _row): the data exactly as
# stored, except for a JSON string, whose frame is the string itself (made from the data).
_RANGE_COLUMNS = (RANGE_COLUMNS.removesuffix("text")
                  + "COALESCE(text, CASE json_type(data) WHEN 'text' THEN NULL ELSE data END)")
SEARCH_NICENESS = 10  # added to the process's nice value for the search thread
WAL_CHECKPOINT_PAGES = 10_000
WAL_KEPT_BYTES = 64 << 20  # the -wal file is cut back to this after a checkpoint
# The writer's page cache (SQLite's default is 2 MiB): a batch spread over many channels touches
# a leaf page per channel in each index; with them cached, a row costs a quarter less of the
# writer thread (bench/RESULTS.md, notes).
WRITER_CACHE_KIB = 16 << 10
_COUNT = "UPDATE channels SET records = records + ? WHERE id = ?"
_NUMBER = (
    "INSERT INTO channels (app, name, records) VALUES (?, ?, 0) "
    "ON CONFLICT (app, name) DO UPDATE SET records = records RETURNING id"
)
_APP_COLUMNS = "id, name, key, secret, created, settings"
_WIDGET_COLUMNS = "id, name, html, css, js, updated"


def _yield_to_live_traffic() -> None:
    """Lower the search thread's scheduling priority. On Linux a thread is a task with a nice
    value of its own: while the event loop has frames to deliver, the kernel runs it first, and
    searches use the time it leaves. Searches release the GIL inside SQLite, so without this a
    search takes its share of the core from live traffic (bench/RESULTS.md, search under load).
    Elsewhere the thread keeps the process's priority."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, ValueError, OverflowError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           os.getpriority(os.PRIO_PROCESS, 0) + SEARCH_NICENESS)


class SqliteStore(Store):
    """Appends are queued and committed by one task, many per transaction."""

    def __init__(self, path: str, commit_interval_ms: float = 0.0,
                 on_commit: CommitObserver | None = None) -> None:
        self._path = path
        self._commits: GroupCommit[tuple[Any, ...]] = GroupCommit(
            self._write_batch, self._row, "sqlite-commits", commit_interval_ms / 1000, on_commit)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._searcher: sqlite3.Connection | None = None  # used on _search_thread only
        self._search_thread: ThreadPoolExecutor | None = None
        self._counts = SearchCounts(SQLITE)
        self._channel_ids: dict[ChannelKey, int] = {}  # numbers given in committed batches

    async def open(self) -> None:
        """Open the file and apply migrations; on failure (not a database, locked) a
        `StoreError` naming the file, with nothing left open (its threads would keep the
        process alive)."""
        try:
            await self._open()
        except (sqlite3.Error, OSError) as error:
            await self.close()
            raise StoreError(f"SQLite at {self._path}: {error}") from None
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = await aiosqlite.connect(self._path, isolation_level=None)
        # The timeout first: several workers may open a new file at once.
        await self._writer.execute("PRAGMA busy_timeout=5000")
        await self._writer.execute("PRAGMA journal_mode=WAL")
        await self._writer.execute("PRAGMA synchronous=NORMAL")
        # Checkpoint every WAL_CHECKPOINT_PAGES instead of 1,000: a batch spread over many
        # channels writes a few hundred pages, most of them again in the next batches.
        await self._writer.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        await self._writer.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")
        await self._writer.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        await self._migrate(self._writer)
        self._reader = await self._connect()
        thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-search",
                                    initializer=_yield_to_live_traffic)
        try:
            self._searcher = await asyncio.get_running_loop().run_in_executor(
                thread, self._connect_searcher)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        self._search_thread = thread
        self._commits.start()

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self._path, isolation_level=None)
        await db.execute("PRAGMA busy_timeout=5000")
        return db

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        """Apply pending migrations, each in its own transaction. Processes starting together
        may race for one: the loser's transaction fails and rolls back, and it finds the
        migration applied."""
        for number, sql in migrations("sqlite"):
            if await self._version(db) >= number:
                continue
            log.info("applying migration %04d", number)
            try:
                await db.executescript(
                    f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version={number};\nCOMMIT;")
            except aiosqlite.Error:
                with contextlib.suppress(aiosqlite.Error):
                    await db.execute("ROLLBACK")
                if await self._version(db) < number:
                    raise

    async def _version(self, db: aiosqlite.Connection) -> int:
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    def _connect_searcher(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        return db

    async def _on_search_thread(self, work: Callable[..., T], *args: Any) -> T:
        if self._search_thread is None:
            raise StoreError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._search_thread, work, *args)

    async def close(self) -> None:
        await self._commits.close()
        searcher, self._searcher = self._searcher, None  # searches from now on: StoreError
        if searcher is not None:
            await self._on_search_thread(searcher.close)  # after the searches queued before
        if self._search_thread is not None:
            self._search_thread.shutdown(wait=False)
            self._search_thread = None
        for db in (self._reader, self._writer):
            if db is not None:
                await db.close()
        self._reader = self._writer = None

    @property
    def _db(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise StoreError("store is not open")
        return self._writer

    @property
    def _read_db(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("store is not open")
        return self._reader

    # apps -------------------------------------------------------------------------------------

    async def create_app(self, name: str, key: str, secret: str) -> App:
        app = App(id=name, name=name, key=key, secret=secret, created=now_ms())
        try:
            await self._db.execute(
                f"INSERT INTO apps ({_APP_COLUMNS}) VALUES (?, ?, ?, ?, ?, '{{}}')",
                (app.id, app.name, app.key, app.secret, app.created),
            )
        except aiosqlite.IntegrityError as error:
            raise StoreError(f"an app with this name or key exists already ({error})") from None
        return app

    async def set_app_secret(self, app_id: str, secret: str) -> None:
        await self._db.execute("UPDATE apps SET secret = ? WHERE id = ?", (secret, app_id))

    async def set_app_settings(self, app_id: str, settings: dict[str, Any]) -> None:
        await self._db.execute("UPDATE apps SET settings = ? WHERE id = ?",
                               (orjson.dumps(settings).decode(), app_id))

    async def _one_app(self, where: str, value: str) -> App | None:
        async with self._read_db.execute(
            f"SELECT {_APP_COLUMNS} FROM apps WHERE {where} = ?", (value,)
        ) as cursor:
            row = await cursor.fetchone()
        return app_from_row(row) if row else None

    async def app_by_key(self, key: str) -> App | None:
        return await self._one_app("key", key)

    async def app_by_name(self, name: str) -> App | None:
        return await self._one_app("name", name)

    async def list_apps(self) -> list[App]:
        async with self._read_db.execute(
            f"SELECT {_APP_COLUMNS} FROM apps ORDER BY created, name"
        ) as cursor:
            return [app_from_row(row) for row in await cursor.fetchall()]

    # records ----------------------------------------------------------------------------------

    def append_record(self, record: Record) -> asyncio.Future[None]:
        return self._commits.append(record)

    def _row(self, record: Record) -> tuple[Any, ...]:
        """A record as a row, its channel's number first (the channel's key while it has none:
        the batch's transaction numbers it). A piesocket frame that is exactly what its data
        turns back into is not stored twice: read back, the frame is the data column's text,
        byte for byte (it keeps the JSON text as written, unlike PostgreSQL's jsonb)."""
        data = orjson.dumps(record.data).decode()
        text = None if record.text == text_of(record.data, data) else record.text
        key = record.key
        return (self._channel_ids.get(key, key), record.seq, record.id, record.client_id,
                record.created, record.username, data, text)

    async def _write_batch(self, rows: list[tuple[Any, ...]]) -> None:
        """One transaction for the batch, the numbers of its new channels and its channels'
        counts; rolled back whole if any row fails (and the numbers it gave are forgotten)."""
        db = self._db
        counts = Counter(row[0] for row in rows)
        numbered: dict[ChannelKey, int] = {}
        try:
            await db.execute("BEGIN")
            for key in counts:
                if isinstance(key, tuple):
                    number = self._channel_ids.get(key)
                    numbered[key] = await self._number(db, key) if number is None else number
            if numbered:
                rows = [(numbered[row[0]], *row[1:]) if isinstance(row[0], tuple) else row
                        for row in rows]
                counts = Counter(row[0] for row in rows)
            await db.executemany(_INSERT, rows)
            await db.executemany(_COUNT, [(n, channel) for channel, n in counts.items()])
            await db.execute("COMMIT")
        except Exception:
            with contextlib.suppress(aiosqlite.Error):
                await db.execute("ROLLBACK")
            raise
        self._channel_ids.update(numbered)

    @staticmethod
    async def _number(db: aiosqlite.Connection, key: ChannelKey) -> int:
        """The channel's number, given now if it has none (another process may have)."""
        (row,) = await db.execute_fetchall(_NUMBER, key)
        return int(row[0])

    async def last_seq(self, app: str, channel: str) -> int:
        where_sql, params = compile_where(app, channel, [])
        async with self._read_db.execute(
            f"SELECT MAX(seq) FROM records WHERE {where_sql}", params
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def read_range(self, app: str, channel: str, after_seq: int, limit: int,
                         filters: list[dict[str, Any]] | None = None) -> list[Record]:
        where_sql, params = compile_where(app, channel, filters or [])
        async with self._read_db.execute(
            f"SELECT {_RANGE_COLUMNS} FROM records "
            f"WHERE {where_sql} AND seq > ? ORDER BY seq LIMIT ?",
            (*params, after_seq, limit),
        ) as cursor:
            rows = await cursor.fetchall()
        return [stored_record(app, channel, row) for row in rows]

    async def search_records(self, app: str, channel: str, query: dict[str, Any]) -> dict[str, Any]:
        if self._searcher is None:
            raise StoreError("store is not open")
        return await self._on_search_thread(
            self._search_now, self._searcher, self._counts.plan(app, channel, query))

    @staticmethod
    def _search_now(db: sqlite3.Connection, plan: Plan) -> dict[str, Any]:
        """On the search thread: every statement of the search in one read transaction. A
        cancelled caller leaves it to finish here, so the transaction always ends."""
        db.execute("BEGIN")
        try:
            return run_plan(plan, lambda statement: db.execute(
                statement.sql, statement.params).fetchall())
        finally:
            if db.in_transaction:  # SQLite may have rolled back on its own (disk full, I/O)
                db.execute("ROLLBACK")

    # widgets ----------------------------------------------------------------------------------

    async def list_widgets(self, app: str) -> list[Widget]:
        async with self._read_db.execute(
            f"SELECT {_WIDGET_COLUMNS} FROM widgets WHERE app = ? ORDER BY name, id", (app,)
        ) as cursor:
            return [Widget(*row) for row in await cursor.fetchall()]

    async def get_widget(self, app: str, widget_id: str) -> Widget | None:
        async with self._read_db.execute(
            f"SELECT {_WIDGET_COLUMNS} FROM widgets WHERE app = ? AND id = ?", (app, widget_id)
        ) as cursor:
            row = await cursor.fetchone()
        return Widget(*row) if row else None

    async def save_widget(self, app: str, widget: Widget) -> Widget:
        saved = Widget(widget.id, widget.name, widget.html, widget.css, widget.js, now_ms())
        await self._db.execute(
            f"INSERT OR REPLACE INTO widgets (app, {_WIDGET_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (app, saved.id, saved.name, saved.html, saved.css, saved.js, saved.updated),
        )
        return saved

    async def delete_widget(self, app: str, widget_id: str) -> bool:
        cursor = await self._db.execute(
            "DELETE FROM widgets WHERE app = ? AND id = ?", (app, widget_id)
        )
        return cursor.rowcount > 0
