"""What only the SQLite store does: its search thread's life around `close`, reading frames
stored as data, migrating a store made before channel numbers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from app.errors import NotStored, StoreError
from app.protocol import piesocket_frame
from app.query import validate_query
from app.records import Record
from app.store.base import migrations
from app.store.sqlite import BACKGROUND_NICENESS, SqliteStore, _statements

pytestmark = pytest.mark.asyncio


async def test_searches_racing_close_answer_or_say_the_store_is_closed(tmp_path: Path) -> None:
    """Searches still coming while the store closes either finish or raise StoreError, never a
    driver error about a closed connection; the store can be opened again afterwards."""
    store = SqliteStore(str(tmp_path / "racing.sqlite3"))
    await store.open()
    query = validate_query({})
    outcomes: list[str] = []

    async def keep_searching() -> None:
        while True:
            try:
                await store.search_records("demo", "racing", query)
            except StoreError:
                outcomes.append("closed")
                return
            outcomes.append("answered")

    searchers = [asyncio.create_task(keep_searching()) for _ in range(5)]
    await asyncio.sleep(0.05)
    await store.close()
    await asyncio.wait_for(asyncio.gather(*searchers), 5)
    assert outcomes.count("closed") == 5 and "answered" in outcomes
    await store.open()
    assert (await store.search_records("demo", "racing", query))["total"] == 0
    await store.close()


async def test_a_frame_stored_as_its_data_reads_back_as_the_stored_bytes(tmp_path: Path) -> None:
    """A NULL `text` stands for the data column's own text: read back, a piesocket frame is
    those bytes, not a re-encoding of the parsed data (which another orjson might print
    differently); a JSON string's frame is the string itself."""
    path = tmp_path / "frames.sqlite3"
    store = SqliteStore(str(path))
    await store.open()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("INSERT INTO channels (app, name, records) VALUES ('demo', 'frames', 2)")
        db.executemany(
            "INSERT INTO records (channel_id, seq, id, client_id, created, username, data, text) "
            "VALUES ((SELECT id FROM channels WHERE name = 'frames'), ?, ?, 'c', 0, NULL, ?, NULL)",
            [(1, "a", '{"a": 1.50}'), (2, "b", '"quoted"')])
        db.commit()
    stored = await store.read_range("demo", "frames", 0, 10)
    await store.close()
    assert [piesocket_frame(record) for record in stored] == ['{"a": 1.50}', "quoted"]


async def test_a_store_from_before_channel_numbers_keeps_every_record(tmp_path: Path) -> None:
    """Migration 0005 moves the records of a store keyed by (app, channel) text into the
    numbered table: each channel's records read back in seq order with their frames, searches
    count them, the counts are taken from the records (a stale one is corrected), and appends go
    on at the next seq while a taken seq still fails."""
    path = tmp_path / "old.sqlite3"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        for number, sql in migrations("sqlite"):
            if number < 5:
                db.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version={number};\nCOMMIT;")
        db.executemany(
            "INSERT INTO records (app, channel, seq, id, client_id, created, username, data, "
            "text) VALUES (?, ?, ?, ?, 'c', ?, NULL, ?, ?)",
            [("demo", "poll", 2, "p2", 20, '{"v": 2}', None),
             ("other", "poll", 1, "o1", 10, '{"v": 9}', None),
             ("demo", "poll", 1, "p1", 10, '{"v": 1}', '{"v":1}'),
             ("demo", "poll", 3, "p3", 30, '{"v": 3}', None),
             ("demo", "chat", 1, "c1", 10, '"hi"', '"hi"')])
        db.execute("INSERT INTO channel_counts VALUES ('demo', 'poll', 1)")  # stale
    store = SqliteStore(str(path))
    await store.open()
    try:
        poll = await store.read_range("demo", "poll", 0, 10)
        assert [(r.seq, r.id, r.data) for r in poll] == [
            (1, "p1", {"v": 1}), (2, "p2", {"v": 2}), (3, "p3", {"v": 3})]
        assert [piesocket_frame(r) for r in poll] == ['{"v":1}', '{"v": 2}', '{"v": 3}']
        assert [piesocket_frame(r) for r in await store.read_range("demo", "chat", 0, 10)] == [
            '"hi"']
        assert [r.data for r in await store.read_range("other", "poll", 0, 10)] == [{"v": 9}]
        query = validate_query({"filters": [{"field": "data.v", "operator": ">", "value": 1}]})
        assert (await store.search_records("demo", "poll", query))["total"] == 2
        await store.append_record(Record(app="demo", channel="poll", seq=4, id="p4",
                                         client_id="c", created=40, data={"v": 4}))
        with pytest.raises(NotStored):
            await store.append_record(Record(app="demo", channel="poll", seq=2, id="again",
                                             client_id="c", created=50, data={"v": 5}))
        assert await store.last_seq("demo", "poll") == 4
        assert (await store.search_records("demo", "poll", query))["total"] == 3
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        counts = db.execute("SELECT app, name, records FROM channels ORDER BY app, name")
        assert counts.fetchall() == [("demo", "chat", 1), ("demo", "poll", 4), ("other", "poll", 1)]
        latest = max(number for number, _ in migrations("sqlite"))
        assert db.execute("PRAGMA user_version").fetchone() == (latest,)


def _record(channel: str, seq: int) -> Record:
    return Record(app="demo", channel=channel, seq=seq, id=f"{channel}{seq}", client_id="c",
                  created=seq, data={"seq": seq})


async def test_channel_numbers_hold_across_failed_batches_and_stores(tmp_path: Path) -> None:
    """A new channel is numbered in its first batch's transaction: when that batch fails, the
    number goes with it and the next batch numbers the channel again. Two stores on one file
    (two worker processes) find the number the other one gave."""
    path = str(tmp_path / "numbers.sqlite3")
    first, second = SqliteStore(path), SqliteStore(path)
    await first.open()
    await second.open()
    try:
        outcomes = await asyncio.gather(first.append_record(_record("fresh", 1)),
                                        first.append_record(_record("fresh", 1)),
                                        return_exceptions=True)
        assert all(isinstance(outcome, NotStored) for outcome in outcomes)
        await first.append_record(_record("fresh", 1))
        await second.append_record(_record("fresh", 2))
        await second.append_record(_record("other", 1))
        await first.append_record(_record("other", 2))
        for store in (first, second):
            for channel in ("fresh", "other"):
                stored = await store.read_range("demo", channel, 0, 10)
                assert [(r.seq, r.data) for r in stored] == [(1, {"seq": 1}), (2, {"seq": 2})]
    finally:
        await first.close()
        await second.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        channels = db.execute("SELECT name, records FROM channels ORDER BY name").fetchall()
    assert channels == [("fresh", 2), ("other", 2)]


async def test_a_store_reopened_on_another_file_numbers_its_channels_again(
    tmp_path: Path,
) -> None:
    """Channel numbers are remembered per opening: a file put in place of the first (a restored
    backup) numbers its channels its own way, and no record lands in another's channel."""
    path = tmp_path / "swapped.sqlite3"
    store = SqliteStore(str(path))
    await store.open()
    await store.append_record(_record("first", 1))
    await store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    await store.open()
    try:
        await store.append_record(_record("second", 1))  # number 1 in the new file
        await store.append_record(_record("first", 2))
        assert [r.seq for r in await store.read_range("demo", "first", 0, 10)] == [2]
        assert [r.seq for r in await store.read_range("demo", "second", 0, 10)] == [1]
    finally:
        await store.close()


async def test_processes_migrating_together_take_turns(tmp_path: Path) -> None:
    """A process that read an old version, then waited for the write lock while another one
    migrated the file, reads the version again and applies nothing: it used to run 0004 again
    and write version 4 over the migrated file, which then failed every start."""
    path = tmp_path / "race.sqlite3"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("PRAGMA journal_mode=WAL")  # as the store leaves its file
        for number, sql in migrations("sqlite"):
            if number <= 3:
                other.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version={number};\nCOMMIT;")
        other.execute("BEGIN IMMEDIATE")  # the other process holds the lock ...
        store = SqliteStore(str(path))
        opening = asyncio.create_task(store.open())
        await asyncio.sleep(0.3)  # ... while this one has read version 3 and waits for it
        assert not opening.done()
        latest = 0
        for number, sql in migrations("sqlite"):
            if number > 3:
                for statement in _statements(sql):
                    other.execute(statement)
                latest = number
        other.execute(f"PRAGMA user_version={latest}")
        other.execute("COMMIT")
    await opening
    try:
        await store.append_record(_record("after", 1))
        assert [r.seq for r in await store.read_range("demo", "after", 0, 10)] == [1]
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (latest,)


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
async def test_the_writer_and_searches_run_on_threads_that_yield_to_live_traffic(
    tmp_path: Path,
) -> None:
    """The writer and search threads run at a nice value BACKGROUND_NICENESS above the
    process's (at most 19), so the event loop's thread gets the core first; the loop's thread
    keeps the process's. Their Python names tell them apart from other tests' threads."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    lowered = min(base + BACKGROUND_NICENESS, 19)
    if lowered == base:
        pytest.skip("the tests run at the lowest priority already")
    store = SqliteStore(str(tmp_path / "nice.sqlite3"))
    await store.open()
    try:
        await store.append_record(_record("nice", 1))
        await store.search_records("demo", "nice", validate_query({}))
        nice = {thread.name.rsplit("_", 1)[0]: _nice(thread.native_id)
                for thread in threading.enumerate()
                if thread.name.startswith(("sqlite-writer", "sqlite-search"))}
        loop_nice = _nice(threading.get_native_id())
    finally:
        await store.close()
    assert nice == {"sqlite-writer": lowered, "sqlite-search": lowered}
    assert loop_nice == base


def _nice(native_id: int | None) -> int:
    stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[16])  # field 19
