"""The publish pipeline of one process, driven directly: a real SQLite store, the memory broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.broker.memory import MemoryBroker
from app.config import load_settings
from app.node import Node
from app.records import Record
from app.store.sqlite import SqliteStore

pytestmark = pytest.mark.asyncio
KEY = ("demo", "cancelled")


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    """A node whose store waits a second before each commit, so a publish can be cancelled
    while its record is committing."""
    store = SqliteStore(str(tmp_path / "node.sqlite3"), commit_interval_ms=1000)
    started = Node(load_settings({}, {"data_dir": str(tmp_path)}), store, MemoryBroker())
    await store.open()
    await started.start()
    yield started
    await started.stop()
    await store.close()


async def test_a_cancelled_publisher_neither_loses_its_record_nor_cancels_others(
        node: Node) -> None:
    """Cancelling a persistent publish mid-commit (a client that hung up) leaves the record
    stored and delivered, and a plain publish queued behind it on the channel goes through."""
    await node.broker.subscribe(KEY)  # as a member's join would
    stored = asyncio.create_task(publish(node, data="first", client_id="a", persistent=True))
    await asyncio.sleep(0.05)
    plain = asyncio.create_task(publish(node, data="second", client_id="b"))
    await asyncio.sleep(0.05)
    stored.cancel()
    record = await asyncio.wait_for(plain, 5)
    assert record.seq == 2
    with pytest.raises(asyncio.CancelledError):
        await stored
    for _ in range(100):
        if node.channel_messages[KEY] == 2:
            break
        await asyncio.sleep(0.05)
    assert node.channel_messages[KEY] == 2  # both were handed to the channel
    assert [r.data for r in await node.store.read_range(*KEY, 0, 10)] == ["first"]


async def publish(node: Node, **fields: Any) -> Record:
    record = await node.stamp(KEY, **fields)
    await node.dispatch(record)
    return record
