"""The publish pipeline of one process, driven directly: a real SQLite store, the memory broker."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.broker.memory import MemoryBroker
from app.config import load_settings
from app.limits import TokenBucket
from app.member import Member
from app.node import Node
from app.protocol import Dialect, Publish
from app.records import Record
from app.store.base import App
from app.store.sqlite import SqliteStore
from app.ws import MAX_PIPELINED, handle

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


async def test_the_history_costs_the_garbage_collector_nothing(node: Node) -> None:
    """Records kept for resumes are plain tuples of strings and ints, which the collector stops
    tracking: thousands per channel would otherwise lengthen every full collection (which
    stops the event loop) and bring the next one sooner."""
    await node.join(member(node))
    for number in range(50):
        await publish(node, data={"n": number}, client_id="a")
    kept = await node.recover(KEY, 0, None)
    assert kept is not None and [frames.seq for frames in kept] == list(range(1, 51))
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in node._history[KEY].records)


async def test_a_members_persistent_publishes_pause_its_reading_at_the_bound(node: Node) -> None:
    """A persistent member's publishes are not waited for one by one, but once MAX_PIPELINED
    wait for their commit (a second here) its read loop waits for room; all are then stored."""
    sender = member(node, persistent=True)
    await node.join(sender)
    sending = asyncio.create_task(send_all(node, sender, MAX_PIPELINED + 10))
    await asyncio.sleep(0.3)
    assert not sending.done() and sender.in_flight.count == MAX_PIPELINED
    await asyncio.wait_for(sending, 10)
    await asyncio.wait_for(sender.in_flight.wait_until(0), 10)
    assert len(await node.store.read_range(*KEY, 0, 1000)) == MAX_PIPELINED + 10


async def send_all(node: Node, sender: Member, count: int) -> None:
    for number in range(count):
        await handle(node, sender, Publish({"n": number}, None))


def member(node: Node, persistent: bool = False) -> Member:
    return Member(
        local_id=node.next_member_id(), dialect=Dialect.C8, key=KEY, client_id="m", uuid="m",
        user=None, username=None, notify_self=False, persistent=persistent, presence=False,
        origin=None, remote=None, limits=node.limits(App("demo", "demo", "k", "s", 0)),
        bucket=TokenBucket(0, 1))
