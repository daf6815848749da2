"""The Broker contract, run over every broker: delivery to subscribed nodes, seq order, positions,
epochs, records crossing intact, cluster-wide connection counts, close."""

from __future__ import annotations

import asyncio
import itertools
import random
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from app.broker import create_broker
from app.broker.base import BrokerError
from app.broker.memory import MemoryBroker
from app.broker.redis import RedisBroker
from app.errors import ConfigError
from app.records import ChannelKey, Record, now_ms, record_id
from tests.broker.conftest import Cluster, Peer, RedisServer, free_port, require_redis_server
from tests.live import UNIT

ROOT = Path(__file__).resolve().parents[2]


def new_channel() -> ChannelKey:
    return ("demo", f"room:{secrets.token_hex(4)}")


def make_record(key: ChannelKey, seq: int, **fields: Any) -> Record:
    values: dict[str, Any] = {"client_id": "c1", "created": now_ms(), "data": {"n": seq},
                              "node": "n1", **fields}
    return Record(app=key[0], channel=key[1], seq=seq, id=record_id(seq), **values)


async def publish(peer: Peer, key: ChannelKey, **fields: Any) -> Record:
    """Publish the way the node does: reserve the next seq, stamp, hand over."""
    record = make_record(key, await peer.broker.next_seq(key), **fields)
    await peer.broker.publish(record)
    return record


async def until(check: Callable[[], bool], timeout: float = 5) -> bool:
    """Poll `check` until it holds or `timeout` units pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout * UNIT
    while not check():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def until_async(check: Callable[[], Awaitable[bool]], timeout: float = 5) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout * UNIT
    while not await check():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def needs_nodes(cluster: Cluster) -> None:
    if not cluster.distinct:
        pytest.skip("the memory broker is a single node")


# delivery ---------------------------------------------------------------------------------------


async def test_publish_reaches_subscribed_nodes_only(cluster: Cluster) -> None:
    """A record reaches the handler of a node subscribed to its channel, and no other."""
    a, b = await cluster.node(), await cluster.node()
    key, other = new_channel(), new_channel()
    await a.broker.subscribe(key)
    sent = await publish(b, key)
    await publish(b, other)  # nobody is subscribed to it
    marker = await publish(b, key)
    assert await until(lambda: len(a.records) >= 2)
    assert a.records == [sent, marker]
    if cluster.distinct:
        assert not await until(lambda: bool(b.records), 0.3)


async def test_unsubscribe_stops_delivery(broker: Peer) -> None:
    """Records published between unsubscribe and a new subscribe never reach the node."""
    key = new_channel()
    await broker.broker.subscribe(key)
    first = await publish(broker, key)
    assert await until(lambda: broker.records == [first])
    await broker.broker.unsubscribe(key)
    await publish(broker, key)
    await broker.broker.subscribe(key)
    third = await publish(broker, key)
    assert await until(lambda: len(broker.records) >= 2)
    assert broker.records == [first, third]


async def test_close_stops_delivery(cluster: Cluster) -> None:
    """After close returns, the handler is never called and publish is refused."""
    a, b = await cluster.node(), await cluster.node()
    key = new_channel()
    await a.broker.subscribe(key)
    first = await publish(b, key)
    assert await until(lambda: a.records == [first])
    await a.broker.close()
    await a.broker.close()  # twice is harmless
    with pytest.raises(BrokerError):
        await a.broker.publish(make_record(key, 99))
    with pytest.raises(BrokerError):
        await a.broker.subscribe(new_channel())
    if cluster.distinct:
        await b.broker.subscribe(key)
        later = await publish(b, key)
        assert await until(lambda: b.records == [later])
    assert a.records == [first]


# order ------------------------------------------------------------------------------------------


async def test_seq_is_strictly_increasing_without_gaps_across_nodes(cluster: Cluster) -> None:
    """Two nodes reserving concurrently get disjoint, increasing seqs that together have no gap."""
    a, b = await cluster.node(), await cluster.node()
    key = new_channel()

    async def reserve(peer: Peer, count: int) -> list[int]:
        return [await peer.broker.next_seq(key) for _ in range(count)]

    got_a, got_b = await asyncio.gather(reserve(a, 200), reserve(b, 200))
    for got in (got_a, got_b):
        assert all(x < y for x, y in itertools.pairwise(got))
    assert sorted(got_a + got_b) == list(range(1, 401))
    assert await a.broker.last_seq(key) == 400
    assert await b.broker.last_seq(key) == 400


async def test_every_node_sees_every_record_in_seq_order(cluster: Cluster) -> None:
    """Publishers racing on two nodes hand records over out of order; every node gets them all,
    in seq order, the same sequence everywhere."""
    a = await cluster.node(reorder_window=UNIT)
    b = await cluster.node(reorder_window=UNIT)
    key = new_channel()
    await a.broker.subscribe(key)
    await b.broker.subscribe(key)
    rng = random.Random(7)

    async def publisher(peer: Peer, count: int) -> None:
        for _ in range(count):
            seq = await peer.broker.next_seq(key)
            await asyncio.sleep(rng.random() * 0.004)  # a commit, say: others overtake
            await peer.broker.publish(make_record(key, seq))

    await asyncio.gather(publisher(a, 50), publisher(a, 50), publisher(b, 50), publisher(b, 50))
    assert await until(lambda: len(a.records) >= 200 and len(b.records) >= 200, 10)
    assert a.seqs == list(range(1, 201))
    assert b.records == a.records


async def test_a_record_overtaken_is_delivered_first(broker: Peer) -> None:
    """A record published after a later one is held back for, and delivered before, the later."""
    key = new_channel()
    await broker.broker.subscribe(key)
    first = make_record(key, await broker.broker.next_seq(key))
    second = make_record(key, await broker.broker.next_seq(key))
    await broker.broker.publish(second)
    await broker.broker.publish(first)
    assert await until(lambda: len(broker.records) >= 2)
    assert broker.records == [first, second]


async def test_a_missing_seq_is_skipped_after_the_window_and_dropped_if_late(
    cluster: Cluster,
) -> None:
    """A seq that is never published holds the next record back only for the reorder window;
    if it turns up later it is dropped, so order never goes backwards."""
    peer = await cluster.node(reorder_window=0.2 * UNIT)
    key = new_channel()
    await peer.broker.subscribe(key)
    missing = make_record(key, await peer.broker.next_seq(key))  # a commit that failed, say
    after = await publish(peer, key)
    assert await until(lambda: peer.records == [after])
    await peer.broker.publish(missing)
    last = await publish(peer, key)
    assert await until(lambda: len(peer.records) >= 2)
    assert peer.records == [after, last]


# positions --------------------------------------------------------------------------------------


async def test_raise_seq_lifts_the_position_and_never_lowers_it(cluster: Cluster) -> None:
    """raise_seq puts the next seq above the store's last one, cluster-wide; a lower value is a
    no-op."""
    a, b = await cluster.node(), await cluster.node()
    key = new_channel()
    assert await a.broker.last_seq(key) == 0
    await a.broker.raise_seq(key, 41)
    assert await b.broker.last_seq(key) == 41
    assert await b.broker.next_seq(key) == 42
    await b.broker.raise_seq(key, 10)
    assert await a.broker.last_seq(key) == 42
    assert await a.broker.next_seq(key) == 43


async def test_epoch_is_stable_and_shared_by_every_node(cluster: Cluster) -> None:
    """A channel's epoch is a non-empty string that stays put and is the same on every node."""
    a, b = await cluster.node(), await cluster.node()
    key = new_channel()
    await a.broker.raise_seq(key, 0)
    epoch = a.broker.epoch(key)
    assert isinstance(epoch, str) and epoch
    await b.broker.raise_seq(key, 5)
    await b.broker.next_seq(key)
    await a.broker.next_seq(key)
    assert a.broker.epoch(key) == b.broker.epoch(key) == epoch


# records ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {"data": None},
    {"data": True},
    {"data": 0},
    {"data": -(2**53)},
    {"data": 1.5},
    {"data": 1.0},
    {"data": "héllo ✓ \u2028 \"quoted\""},
    {"data": [1, "a", None, {"b": [False, 2.25]}]},
    {"data": {"nested": {"x": 1, "empty": [], "obj": {}}}, "username": "alice"},
    {"data": None, "binary": bytes(range(256)), "sender": 3},
    {"data": "raw", "text": "raw frame {not json", "username": None, "sender": None},
    {"data": {"score": 9}, "text": '{"event":"x"}', "persistent": True, "node": "n2",
     "sender": 17, "client_id": "abc"},
], ids=["null", "true", "int", "big-int", "float", "float-one", "string", "list", "object",
        "binary", "text", "all-fields"])
async def test_records_cross_the_broker_intact(cluster: Cluster, fields: dict[str, Any]) -> None:
    """The record a node receives equals the one published, every field and every type."""
    a, b = await cluster.node(), await cluster.node()
    key = new_channel()
    await a.broker.subscribe(key)
    sent = await publish(b, key, **fields)
    assert await until(lambda: bool(a.records))
    (received,) = a.records
    assert received == sent
    assert repr(received) == repr(sent)  # True stays True, 1.0 stays a float


# connections ------------------------------------------------------------------------------------


async def test_connection_counts_are_cluster_wide(cluster: Cluster) -> None:
    """Counts add up members of every node, once per member id, and go down on removal."""
    a, b = await cluster.node(), await cluster.node()
    key, other = new_channel(), new_channel()
    assert await a.broker.add_connection(key, "a:1") == 1
    assert await a.broker.add_connection(key, "a:2") == 2
    assert await b.broker.add_connection(key, "b:1") == 3
    assert await a.broker.add_connection(key, "a:1") == 3
    assert await b.broker.add_connection(other, "b:2") == 1
    assert await a.broker.count_connections(key) == 3
    assert await b.broker.count_connections(key) == 3
    assert await b.broker.remove_connection(key, "b:1") == 2
    assert await a.broker.remove_connection(key, "unknown") == 2
    assert await a.broker.remove_connection(key, "a:1") == 1
    assert await a.broker.remove_connection(key, "a:2") == 0
    assert await a.broker.count_connections(other) == 1


async def test_a_closed_node_stops_being_counted_at_once(cluster: Cluster) -> None:
    """A node that closes cleanly takes its members out of the counts."""
    needs_nodes(cluster)
    a, b = await cluster.node(), await cluster.node()
    key = new_channel()
    await a.broker.add_connection(key, "a:1")
    assert await b.broker.add_connection(key, "b:1") == 2
    await b.broker.close()
    assert await a.broker.count_connections(key) == 1


CHILD = """
import asyncio, sys
from app.broker.redis import RedisBroker

async def main():
    url, prefix, ttl, app, channel = sys.argv[1:]
    broker = RedisBroker(url, prefix=prefix, heartbeat_ttl=float(ttl))
    async def last_stored(key):
        return 0

    await broker.start(lambda record: None, last_stored)
    await broker.add_connection((app, channel), "child:1")
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_killed_node_stops_being_counted_within_its_ttl(cluster: Cluster) -> None:
    """A node process killed with SIGKILL keeps being counted while its heartbeat lives, and is
    no longer counted once the heartbeat's TTL has passed."""
    needs_nodes(cluster)
    ttl = 1.0 * UNIT
    a = await cluster.node()
    key = new_channel()
    await a.broker.add_connection(key, "a:1")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, cluster.url, cluster.prefix, str(ttl), *key,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 20 * UNIT)
        assert line.strip() == b"ready"

        async def count_is(expected: int) -> bool:
            return await a.broker.count_connections(key) == expected

        assert await count_is(2)
        # Alive, it refreshes its heartbeat: still counted well past one TTL.
        assert not await until_async(lambda: count_is(1), 2 * ttl / UNIT)
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        await child.wait()
    assert await until_async(lambda: count_is(1), ttl / UNIT + 5)


async def test_live_node_with_a_short_ttl_stays_counted(cluster: Cluster) -> None:
    """A node's own heartbeat keeps its members counted across many TTLs."""
    needs_nodes(cluster)
    a = await cluster.node(heartbeat_ttl=0.5 * UNIT)
    b = await cluster.node()
    key = new_channel()
    await a.broker.add_connection(key, "a:1")

    async def lost() -> bool:
        return await b.broker.count_connections(key) != 1

    assert not await until_async(lost, 1.5)


# engine -----------------------------------------------------------------------------------------


async def test_unreachable_engine_raises_broker_error() -> None:
    """Starting against a Redis nobody listens on fails with BrokerError, not a driver error."""
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(BrokerError):
        await broker.start(lambda record: None, Peer(broker).last_stored)
    await broker.close()


async def test_create_broker_picks_by_scheme() -> None:
    """memory:// and redis:// name their brokers; other schemes are a ConfigError."""
    assert isinstance(create_broker("memory://"), MemoryBroker)
    assert isinstance(create_broker("redis://127.0.0.1:6399/2"), RedisBroker)
    with pytest.raises(ConfigError):
        create_broker("kafka://127.0.0.1")


async def test_nodes_recover_after_a_redis_restart(tmp_path: Path) -> None:
    """When Redis restarts (losing everything), nodes resubscribe, counts come back, and seqs
    continue above those already delivered."""
    require_redis_server()
    server = RedisServer(tmp_path).start()
    cluster = Cluster("redis", server.url, "c8ws-restart:")
    try:
        a = await cluster.node(heartbeat_ttl=UNIT)
        b = await cluster.node(heartbeat_ttl=UNIT)
        key = new_channel()
        await a.broker.raise_seq(key, 0)
        await b.broker.raise_seq(key, 0)
        await a.broker.subscribe(key)
        await b.broker.subscribe(key)
        await a.broker.add_connection(key, "a:1")
        before = await publish(b, key)
        assert await until(lambda: a.records == [before] and b.records == [before])

        server.stop()
        server = RedisServer(tmp_path, server.port).start()

        async def delivered_again() -> bool:
            try:
                await publish(b, key)
            except BrokerError:
                return False
            return await until(lambda: len(a.records) > 1, 0.2)

        assert await until_async(delivered_again, 20)
        assert a.records[1].seq > before.seq
        assert await until_async(lambda: _count_is(b, key, 1), 10)
    finally:
        await cluster.close()
        server.stop()


async def _count_is(peer: Peer, key: ChannelKey, expected: int) -> bool:
    try:
        return await peer.broker.count_connections(key) == expected
    except BrokerError:
        return False
