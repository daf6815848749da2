"""The embedded store: one SQLite file in WAL mode; a writer connection doing group commit and a
search connection, each on a thread of its own at a lower priority; and a reader connection so
reads never wait for a batch. The writer takes each batch whole, and the search thread each
search (one transaction, one hand-off from the event loop), so search snapshots never hold back
the other reads.
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
from collections.abc import Callable, Iterator, Sequence
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
BACKGROUND_NICENESS = 10  # added to the process's nice value for the writer and search threads
WAL_CHECKPOINT_PAGES = 10_000
WAL_KEPT_BYTES = 64 << 20  # the -wal file is cut back to this after a checkpoint
# The writer's page cache (SQLite's default is 2 MiB): a batch spread over many channels touches
# a leaf page per channel in each index; with them cached, a row cost a quarter less of the
# writer thread (bench/RESULTS.md, notes; measured before migration 0005).
WRITER_CACHE_KIB = 16 << 10
_COUNT = "UPDATE channels SET records = records + ? WHERE id = ?"
_NUMBER = (
    "INSERT INTO channels (app, name, records) VALUES (?, ?, 0) "
    "ON CONFLICT (app, name) DO UPDATE SET records = records RETURNING id"
)
_APP_COLUMNS = "id, name, key, secret, created, settings"
_WIDGET_COLUMNS = "id, name, html, css, js, updated"


def _yield_to_live_traffic() -> None:
    """Lower the calling thread's scheduling priority. On Linux a thread is a task with a nice
    value of its own: while the event loop has frames to deliver, the kernel runs it first, and
    the thread uses the time it leaves. Searches release the GIL inside SQLite, so without this a
    search takes its share of the core from live traffic (bench/RESULTS.md, search under load).
    A writer at the loop's priority wakes up in the middle of the loop's work, again and again
    on a busy core; at a lower one it commits when the loop pauses, a larger batch at a time,
    and a stored message costs the process less (bench/RESULTS.md, notes). Elsewhere the thread
    keeps the process's priority."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, ValueError, OverflowError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICENESS)


class _ConnectionThread:
    """A connection used on one thread of its own, at a lower priority: each call hands one
    function over from the event loop."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def open(self, path: str, setup: Callable[[sqlite3.Connection], None]) -> None:
        """Connect and run `setup` on the thread; on failure nothing is left open."""
        thread = ThreadPoolExecutor(1, thread_name_prefix=self._name,
                                    initializer=_yield_to_live_traffic)

        def connect() -> sqlite3.Connection:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA busy_timeout=5000")
                setup(db)
            except BaseException:
                db.close()
                raise
            return db

        try:
            self._db = await asyncio.get_running_loop().run_in_executor(thread, connect)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        self._thread = thread

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """`work(connection, *args)` on the thread; `StoreError` once closing."""
        db, thread = self._db, self._thread
        if db is None or thread is None:
            raise StoreError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(thread, work, db, *args)

    async def close(self) -> None:
        """Close the connection after the work queued before; calls from now on fail."""
        db, thread = self._db, self._thread
        self._db = self._thread = None
        if thread is None:
            return
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(thread, db.close)
        thread.shutdown(wait=False)


def _set_up_writer(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    # Checkpoint every WAL_CHECKPOINT_PAGES instead of 1,000: a batch spread over many
    # channels writes a few hundred pages, most of them again in the next batches.
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    db.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")
    db.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
    _migrate(db)


def _migrate(db: sqlite3.Connection) -> None:
    """Apply pending migrations, each in its own transaction. Processes starting together take
    turns: each reads the version again once it holds the write lock, so none applies a
    migration another has applied meanwhile (nor writes an older version over a newer one)."""
    for number, sql in migrations("sqlite"):
        if _version(db) >= number:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            if _version(db) >= number:  # applied while this process waited for the lock
                db.execute("ROLLBACK")
                continue
            log.info("applying migration %04d", number)
            for statement in _statements(sql):
                db.execute(statement)
            db.execute(f"PRAGMA user_version={number}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise


def _statements(script: str) -> Iterator[str]:
    """A script's statements one at a time (`executescript` would commit the open transaction
    first)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        yield pending


def _version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _execute(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    """One statement, committed; how many rows it changed."""
    return db.execute(sql, params).rowcount


def _number(db: sqlite3.Connection, key: ChannelKey) -> int:
    """The channel's number, given now if it has none (another process may have)."""
    (number,) = db.execute(_NUMBER, key).fetchone()
    return int(number)


class SqliteStore(Store):
    """Appends are queued and committed by one task, many per transaction."""

    def __init__(self, path: str, commit_interval_ms: float = 0.0,
                 on_commit: CommitObserver | None = None) -> None:
        self._path = path
        self._commits: GroupCommit[tuple[Any, ...]] = GroupCommit(
            self._write_batch, self._row, "sqlite-commits", commit_interval_ms / 1000, on_commit)
        self._writer = _ConnectionThread("sqlite-writer")
        self._reader: aiosqlite.Connection | None = None
        self._searcher = _ConnectionThread("sqlite-search")
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
        self._channel_ids.clear()  # the file may not be the one they were given in
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        await self._writer.open(self._path, _set_up_writer)  # the migrations first
        self._reader = await aiosqlite.connect(self._path, isolation_level=None)
        await self._reader.execute("PRAGMA busy_timeout=5000")
        await self._searcher.open(self._path, lambda db: None)
        self._commits.start()

    async def close(self) -> None:
        await self._commits.close()
        await self._searcher.close()  # after the searches queued before
        await self._writer.close()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    @property
    def _read_db(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("store is not open")
        return self._reader

    # apps -------------------------------------------------------------------------------------

    async def create_app(self, name: str, key: str, secret: str) -> App:
        app = App(id=name, name=name, key=key, secret=secret, created=now_ms())
        try:
            await self._writer.run(
                _execute, f"INSERT INTO apps ({_APP_COLUMNS}) VALUES (?, ?, ?, ?, ?, '{{}}')",
                (app.id, app.name, app.key, app.secret, app.created),
            )
        except sqlite3.IntegrityError as error:
            raise StoreError(f"an app with this name or key exists already ({error})") from None
        return app

    async def set_app_secret(self, app_id: str, secret: str) -> None:
        await self._writer.run(_execute, "UPDATE apps SET secret = ? WHERE id = ?",
                               (secret, app_id))

    async def set_app_settings(self, app_id: str, settings: dict[str, Any]) -> None:
        await self._writer.run(_execute, "UPDATE apps SET settings = ? WHERE id = ?",
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
        self._channel_ids.update(await self._writer.run(self._commit, rows))

    def _commit(self, db: sqlite3.Connection,
                rows: list[tuple[Any, ...]]) -> dict[ChannelKey, int]:
        """On the writer thread: one transaction for the batch, the numbers of its new channels
        and its channels' counts, rolled back whole if any row fails; the numbers it gave."""
        counts = Counter(row[0] for row in rows)
        numbered: dict[ChannelKey, int] = {}
        db.execute("BEGIN")
        try:
            for key in counts:
                if isinstance(key, tuple):
                    number = self._channel_ids.get(key)
                    numbered[key] = _number(db, key) if number is None else number
            if numbered:
                rows = [(numbered[row[0]], *row[1:]) if isinstance(row[0], tuple) else row
                        for row in rows]
                counts = Counter(row[0] for row in rows)
            db.executemany(_INSERT, rows)
            db.executemany(_COUNT, [(n, channel) for channel, n in counts.items()])
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back on its own (disk full, I/O)
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
        return numbered

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
        return await self._searcher.run(self._search_now, self._counts.plan(app, channel, query))

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
        await self._writer.run(
            _execute,
            f"INSERT OR REPLACE INTO widgets (app, {_WIDGET_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (app, saved.id, saved.name, saved.html, saved.css, saved.js, saved.updated),
        )
        return saved

    async def delete_widget(self, app: str, widget_id: str) -> bool:
        deleted = await self._writer.run(
            _execute, "DELETE FROM widgets WHERE app = ? AND id = ?", (app, widget_id))
        return deleted > 0
