"""The Broker and Presence contracts, run over every broker: delivery to subscribed nodes, seq
order, positions (and their loss), epochs, records crossing intact, cluster-wide connection
counts and presence, close."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app.broker import create_broker
from app.broker.base import BrokerError, PresenceChange, PresenceEvent, PresenceMember
from app.broker.memory import MemoryBroker
from app.broker.redis import POOL_SIZE, RedisBroker
from app.broker.redis_engine import channel_tag
from app.broker.redis_presence import RedisPresence
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


def lose_position(cluster: Cluster, key: ChannelKey) -> None:
    """What a Redis restarted without persistence does to a channel, without the restart."""
    with redis.Redis.from_url(cluster.url) as client:
        assert client.delete(f"{cluster.prefix}pos:{channel_tag(key)}") == 1


def set_position_back(cluster: Cluster, key: ChannelKey, seq: int) -> None:
    """What a Redis restored from an older snapshot does to a channel (its epoch, an older seq),
    without the restore."""
    with redis.Redis.from_url(cluster.url) as client:
        assert client.hset(f"{cluster.prefix}pos:{channel_tag(key)}", "seq", seq) == 0


def needs_redis(cluster: Cluster) -> None:
    if cluster.kind != "redis":
        pytest.skip("only the redis broker has an engine that can lose or roll back its state")


async def one_ahead(cluster: Cluster, seqs: int) -> tuple[Peer, Peer, ChannelKey]:
    """Two nodes and a new channel: the first has taken `seqs` seqs, the second only seeded it."""
    ahead, behind = await cluster.node(), await cluster.node()
    key = new_channel()
    await behind.broker.raise_seq(key, 0)
    for _ in range(seqs):
        await ahead.broker.next_seq(key)
    return ahead, behind, key


def distinct(*peers: Peer) -> list[Peer]:
    """The peers, each once (memory's nodes are all one)."""
    return list({id(peer): peer for peer in peers}.values())


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


async def test_a_batch_published_together_arrives_whole_and_in_order(cluster: Cluster) -> None:
    """`publish_all` (a committed batch, over two channels) reaches the subscribed nodes as
    `publish` would, each channel's records in seq order."""
    a, b = await cluster.node(), await cluster.node()
    key, other = new_channel(), new_channel()
    for peer in distinct(a, b):
        await peer.broker.subscribe(key)
        await peer.broker.subscribe(other)
    batch = [make_record(channel, await b.broker.next_seq(channel))
             for _ in range(20) for channel in (key, other)]
    await b.broker.publish_all(batch)
    for peer in distinct(a, b):
        assert await until(lambda peer=peer: len(peer.records) >= 40)
        assert [r for r in peer.records if r.key == key] == [r for r in batch if r.key == key]
        assert [r for r in peer.records if r.key == other] == [
            r for r in batch if r.key == other]


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
    await a.broker.raise_seq(key, 5)
    epoch = a.broker.epoch(key)
    assert isinstance(epoch, str) and epoch
    await b.broker.raise_seq(key, 5)  # both nodes seed from the same store
    await b.broker.next_seq(key)
    await b.broker.raise_seq(key, 2)
    await a.broker.next_seq(key)
    assert a.broker.epoch(key) == b.broker.epoch(key) == epoch


async def test_takeover_names_no_seq_while_the_position_lasts(cluster: Cluster) -> None:
    """takeover is None for the channel's own epoch and for one it never replaced."""
    a = await cluster.node()
    key = new_channel()
    await a.broker.raise_seq(key, 3)
    await a.broker.next_seq(key)
    assert a.broker.takeover(key, a.broker.epoch(key)) is None
    assert a.broker.takeover(key, "never-seen") is None


async def test_a_lost_position_continues_above_the_store_and_every_seq_seen(
    cluster: Cluster,
) -> None:
    """When Redis loses a channel's position, seqs continue above the store's last one and
    above every seq a node saw, in a new epoch that took over from the old one there; nodes
    subscribed meanwhile keep receiving."""
    needs_nodes(cluster)
    a, b = await cluster.node(), await cluster.node()
    key = new_channel()
    await a.broker.raise_seq(key, 5)
    await a.broker.subscribe(key)
    await b.broker.subscribe(key)
    await publish(b, key)
    seen = await publish(b, key)
    assert await until(lambda: a.seqs == [6, 7])
    old = a.broker.epoch(key)

    lose_position(cluster, key)
    b.stored[key] = 6  # the store holds less than the nodes saw
    after = await publish(b, key)
    assert after.seq == seen.seq + 1
    assert b.broker.epoch(key) != old and b.broker.takeover(key, old) == seen.seq
    assert await until(lambda: a.records[-1:] == [after])
    assert await a.broker.last_seq(key) == after.seq
    assert (a.broker.epoch(key), a.broker.takeover(key, old)) == (b.broker.epoch(key), 7)

    lose_position(cluster, key)
    a.stored[key] = 20  # the store holds more: persistent records no node delivered
    middle = b.broker.epoch(key)
    assert await a.broker.next_seq(key) == 21
    assert a.broker.takeover(key, middle) == 20 and a.broker.takeover(key, old) is None


async def test_a_position_restored_from_stale_knowledge_starts_again_above(
    cluster: Cluster,
) -> None:
    """A node that restores a lost position knowing fewer seqs than another node saw is
    corrected by that node's next call: numbering starts again above what it saw, in another
    epoch that still took over from the lost one."""
    needs_nodes(cluster)
    knows_more, knows_less, key = await one_ahead(cluster, 10)
    lost = knows_more.broker.epoch(key)

    lose_position(cluster, key)
    assert await knows_less.broker.next_seq(key) == 1
    hasty = knows_less.broker.epoch(key)
    assert await knows_more.broker.next_seq(key) == 11
    assert knows_more.broker.epoch(key) not in (lost, hasty)
    assert knows_more.broker.takeover(key, lost) == 10
    assert knows_more.broker.takeover(key, hasty) is None
    assert await knows_less.broker.next_seq(key) == 12


async def test_a_position_set_back_in_its_epoch_continues_above_every_seq_known(
    cluster: Cluster,
) -> None:
    """When Redis restores an older copy of a position (its epoch, a lower seq), the next call of
    a node that saw more starts a new epoch above what it saw, taking over from the restored one;
    a node settling with the store's last seq starts above that; the others continue above."""
    needs_redis(cluster)
    a, b, key = await one_ahead(cluster, 10)
    restored = a.broker.epoch(key)

    set_position_back(cluster, key, 4)
    assert await a.broker.next_seq(key) == 11
    assert a.broker.epoch(key) != restored and a.broker.takeover(key, restored) == 10
    assert await b.broker.next_seq(key) == 12
    assert b.broker.epoch(key) == a.broker.epoch(key)

    set_position_back(cluster, key, 4)
    restored = a.broker.epoch(key)
    seeding = await cluster.node()
    await seeding.broker.raise_seq(key, 30)  # the store's last seq, as the node seeds with
    assert seeding.broker.takeover(key, restored) == 30
    assert await b.broker.next_seq(key) == 31


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


async def test_a_node_whose_heartbeat_expired_counts_its_members_again(
    cluster: Cluster,
) -> None:
    """A node taken for dead (its heartbeat expired: it stalled, or Redis restarted) counts its
    members again on its next heartbeat, only those it still has."""
    needs_nodes(cluster)
    a = await cluster.node(heartbeat_ttl=0.5 * UNIT)
    b = await cluster.node()
    key = new_channel()
    await a.broker.add_connection(key, "a:1")
    await a.broker.add_connection(key, "a:2")
    await b.broker.add_connection(key, "b:1")
    assert isinstance(a.broker, RedisBroker)
    with redis.Redis.from_url(cluster.url) as client:
        client.delete(f"{cluster.prefix}node:{a.broker.node_id}")
    assert await b.broker.count_connections(key) == 1
    await a.broker.remove_connection(key, "a:2")
    assert await until_async(lambda: _count_is(b, key, 2), 5)
    assert not await until_async(lambda: _count_is(b, key, 3), 1)


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


async def test_a_node_with_every_pooled_connection_busy_keeps_its_heartbeat(
    cluster: Cluster,
) -> None:
    """An overloaded node's commands all wait for its pool, and so does its upkeep (a presence
    sweep, here); its heartbeat goes out on a connection of its own and on time, so the other
    nodes keep counting its members."""
    needs_nodes(cluster)
    a = await cluster.node(heartbeat_ttl=0.5 * UNIT)
    b = await cluster.node()
    key = new_channel()
    await a.broker.add_connection(key, "a:1")
    await a.presence.join(key, "a:1", "u-ann", "ann")  # each upkeep sweeps the channel
    assert isinstance(a.broker, RedisBroker)
    # Every pooled connection of the node (the pub/sub connection is one of them) held for 4 s,
    # under the 5 s socket timeout, by a blocking read of a list nobody fills, as a backlog of
    # slow commands would hold them.
    nothing = f"{cluster.prefix}never-filled"
    held = [asyncio.create_task(a.broker._redis.blpop([nothing], timeout=4))
            for _ in range(POOL_SIZE - 1)]
    await asyncio.sleep(0.2)

    async def lost() -> bool:
        return await b.broker.count_connections(key) != 1

    assert not await until_async(lost, 3)
    assert await asyncio.gather(*held) == [None] * (POOL_SIZE - 1)


# presence ---------------------------------------------------------------------------------------

ANN = PresenceMember("u-ann", "ann")
BOB = PresenceMember("u-bob", None)


def joined(key: ChannelKey, member: PresenceMember, *members: PresenceMember) -> PresenceEvent:
    return PresenceEvent(key, PresenceChange.JOINED, member, members)


def left(key: ChannelKey, member: PresenceMember, *members: PresenceMember) -> PresenceEvent:
    return PresenceEvent(key, PresenceChange.LEFT, member, members)


async def test_a_new_uuid_is_announced_once_to_every_subscribed_node(cluster: Cluster) -> None:
    """join returns the roster in join order; a uuid new to the channel reaches every
    subscribed node's handler once, with the roster; more connections of it announce nothing
    and keep its first user."""
    a, b = await cluster.node(), await cluster.node()
    key = new_channel()
    await a.broker.subscribe(key)
    await b.broker.subscribe(key)
    assert await a.presence.join(key, "a:1", "u-ann", "ann") == [ANN]
    assert await b.presence.join(key, "b:1", "u-bob", None) == [ANN, BOB]
    assert await b.presence.join(key, "b:2", "u-ann", "another") == [ANN, BOB]
    assert await a.presence.join(key, "a:1", "u-ann", "ann") == [ANN, BOB]  # counted once
    for peer in distinct(a, b):
        assert await until(lambda peer=peer: len(peer.events) >= 2)
        assert peer.events == [joined(key, ANN, ANN), joined(key, BOB, ANN, BOB)]
    assert not await until(lambda: len(a.events) > 2 or len(b.events) > 2, 0.3)


async def test_the_last_connection_leaving_announces_after_the_grace_period(
    cluster: Cluster,
) -> None:
    """A uuid leaves only when its last connection on any node closed and the grace period
    passed: every subscribed node then gets member_left with the roster; unknown connection ids
    are ignored."""
    grace = 0.6 * UNIT
    a, b = await cluster.node(grace=grace), await cluster.node(grace=grace)
    key = new_channel()
    await a.broker.subscribe(key)
    await b.broker.subscribe(key)
    await a.presence.join(key, "a:1", "u-ann", "ann")
    await b.presence.join(key, "b:1", "u-bob", None)
    await a.presence.join(key, "a:2", "u-bob", None)
    assert await until(lambda: len(a.events) == len(b.events) == 2)
    await b.presence.leave(key, "b:1")
    await b.presence.leave(key, "b:unknown")
    assert not await until(lambda: len(a.events) > 2, 2 * grace / UNIT)  # a:2 is still bob
    await a.presence.leave(key, "a:2")
    await a.presence.leave(key, "a:2")  # twice is once
    assert not await until(lambda: len(a.events) > 2, grace / 2 / UNIT)
    for peer in distinct(a, b):
        assert await until(lambda peer=peer: len(peer.events) >= 3)
        assert peer.events[2:] == [left(key, BOB, ANN)]
    await a.presence.leave(key, "a:1")
    assert await until(lambda: a.events[-1] == left(key, ANN))


async def test_coming_back_within_the_grace_period_is_neither_leave_nor_join(
    cluster: Cluster,
) -> None:
    """A uuid whose connection closes on one node and reopens on another (or the same) within
    the grace period stays in the roster without any event."""
    grace = 0.6 * UNIT
    a, b = await cluster.node(grace=grace), await cluster.node(grace=grace)
    key = new_channel()
    await a.broker.subscribe(key)
    await b.broker.subscribe(key)
    await a.presence.join(key, "a:1", "u-ann", "ann")
    assert await until(lambda: len(a.events) == 1)
    await a.presence.leave(key, "a:1")
    assert await b.presence.join(key, "b:1", "u-ann", "ann") == [ANN]
    assert not await until(lambda: len(a.events) > 1 or len(b.events) > 1, 3 * grace / UNIT)


async def test_a_join_and_a_leave_of_one_uuid_overlapping_keep_it_present(
    cluster: Cluster,
) -> None:
    """A uuid's new connection joining while its old one leaves on the same node (a page
    reloaded), in either order, keeps the uuid in the roster without any event; its last
    connection leaving still announces it."""
    grace = 0.3 * UNIT
    a = await cluster.node(grace=grace)
    key = new_channel()
    await a.broker.subscribe(key)
    await a.presence.join(key, "a:1", "u-ann", "ann")
    roster, _ = await asyncio.gather(a.presence.join(key, "a:2", "u-ann", "ann"),
                                     a.presence.leave(key, "a:1"))
    assert roster == [ANN]
    assert not await until(lambda: len(a.events) > 1, 3 * grace / UNIT)
    await asyncio.gather(a.presence.leave(key, "a:2"), a.presence.join(key, "a:3", "u-ann", "ann"))
    assert not await until(lambda: len(a.events) > 1, 3 * grace / UNIT)
    assert a.events == [joined(key, ANN, ANN)]
    await a.presence.leave(key, "a:3")
    assert await until(lambda: a.events[1:] == [left(key, ANN)])


async def test_a_connection_leaving_while_it_joins_is_not_left_behind(cluster: Cluster) -> None:
    """A connection that leaves while its join is still on its way is announced and then leaves
    like any other."""
    a = await cluster.node()
    key = new_channel()
    await a.broker.subscribe(key)
    await asyncio.gather(a.presence.join(key, "a:1", "u-ann", "ann"),
                         a.presence.leave(key, "a:1"))
    assert await until(lambda: a.events == [joined(key, ANN, ANN), left(key, ANN)])


async def test_a_restore_keeps_a_join_on_its_way(cluster: Cluster) -> None:
    """The heartbeat restoring a node's connections while one of them is still joining neither
    drops it nor adds it silently: its uuid is announced once and stays."""
    needs_redis(cluster)
    grace = 0.3 * UNIT
    a = await cluster.node(grace=grace, heartbeat_ttl=UNIT)  # its heartbeat sweeps often
    presence = a.presence
    assert isinstance(presence, RedisPresence)
    key = new_channel()
    await a.broker.subscribe(key)
    await presence.join(key, "a:1", "u-ann", "ann")
    await asyncio.gather(presence.join(key, "a:2", "u-bob", None), presence.beat(expired=True))
    await asyncio.gather(presence.beat(expired=True), presence.join(key, "a:3", "u-cy", "cy"))
    cy = PresenceMember("u-cy", "cy")
    assert await until(lambda: len(a.events) >= 3)
    assert not await until(lambda: len(a.events) > 3, 2)
    assert a.events == [joined(key, ANN, ANN), joined(key, BOB, ANN, BOB),
                        joined(key, cy, ANN, BOB, cy)]


async def test_presence_events_reach_subscribed_nodes_only(cluster: Cluster) -> None:
    """Events go where records go: a node not subscribed to the channel gets none."""
    needs_nodes(cluster)
    a, b = await cluster.node(), await cluster.node()
    key = new_channel()
    await a.broker.subscribe(key)
    await b.presence.join(key, "b:1", "u-bob", None)
    assert await until(lambda: a.events == [joined(key, BOB, BOB)])
    assert not await until(lambda: bool(b.events), 0.3)


async def test_a_closed_node_leaves_the_rosters(cluster: Cluster) -> None:
    """A node that closes cleanly takes its uuids out: another node with connections in the
    channel announces their leaving within a heartbeat and the grace period."""
    needs_nodes(cluster)
    a = await cluster.node(grace=0.2 * UNIT, heartbeat_ttl=UNIT)
    b = await cluster.node()
    key = new_channel()
    await a.broker.subscribe(key)
    await a.presence.join(key, "a:1", "u-ann", "ann")
    await b.presence.join(key, "b:1", "u-bob", None)
    await b.broker.close()
    assert await until(lambda: a.events[-1:] == [left(key, BOB, ANN)], 5)


PRESENCE_CHILD = """
import asyncio, sys
from app.broker.redis import RedisBroker

async def main():
    url, prefix, ttl, app, channel = sys.argv[1:]
    broker = RedisBroker(url, prefix=prefix, heartbeat_ttl=float(ttl))
    presence = broker.presence(0.1, lambda event: None)

    async def last_stored(key):
        return 0

    await broker.start(lambda record: None, last_stored)
    await presence.join((app, channel), "child:1", "u-child", "kid")
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_killed_node_leaves_the_rosters_within_its_ttl(cluster: Cluster) -> None:
    """A node process killed with SIGKILL stays present while its heartbeat lives; once the TTL
    has passed, a node with connections in the channel announces its uuids' leaving."""
    needs_nodes(cluster)
    ttl = 1.0 * UNIT
    a = await cluster.node(grace=0.1 * UNIT, heartbeat_ttl=ttl)
    key = new_channel()
    await a.broker.subscribe(key)
    await a.presence.join(key, "a:1", "u-ann", "ann")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PRESENCE_CHILD, cluster.url, cluster.prefix, str(ttl), *key,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )
    kid = PresenceMember("u-child", "kid")
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 20 * UNIT)
        assert line.strip() == b"ready"
        assert await until(lambda: a.events[-1:] == [joined(key, kid, ANN, kid)])
        assert not await until(lambda: len(a.events) > 2, 2)  # alive: it keeps its heartbeat
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        await child.wait()
    assert await until(lambda: a.events[-1:] == [left(key, kid, ANN)], ttl / UNIT + 5)


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
    """When Redis restarts (losing everything), nodes resubscribe, counts and rosters come back,
    and seqs continue above those already delivered in a new epoch that took over from the old
    one."""
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
        await a.presence.join(key, "a:1", "u-ann", "ann")
        before = await publish(b, key)
        assert await until(lambda: a.records == [before] and b.records == [before])
        old = a.broker.epoch(key)

        server.stop()
        server = RedisServer(tmp_path, server.port).start()

        assert await until_async(lambda: _delivered_again(a, b, key), 20)
        assert a.records[1].seq > before.seq
        assert a.broker.epoch(key) == b.broker.epoch(key) != old
        assert a.broker.takeover(key, old) == b.broker.takeover(key, old) == before.seq
        assert await until_async(lambda: _count_is(b, key, 1), 10)
        assert await until_async(lambda: _bob_finds_ann(b, key, "b:1"), 10)
    finally:
        await cluster.close()
        server.stop()


@contextlib.contextmanager
def scripts_refused(admin: redis.Redis) -> Iterator[None]:
    """Redis refuses scripts for a moment (an ACL) and keeps its data: every count, presence
    change and restore fails while the heartbeat itself goes through."""
    admin.execute_command("ACL", "SETUSER", "default", "-eval", "-evalsha")
    try:
        yield
    finally:
        admin.execute_command("ACL", "SETUSER", "default", "+eval", "+evalsha")


@contextlib.asynccontextmanager
async def lone_node(tmp_path: Path, prefix: str) -> AsyncIterator[tuple[Peer, redis.Redis]]:
    """A node (heartbeat TTL of one unit) on a Redis of its own, and a client of that Redis for
    the test to change it under the node."""
    require_redis_server()
    server = RedisServer(tmp_path).start()
    cluster = Cluster("redis", server.url, prefix)
    admin = redis.Redis.from_url(server.url)
    try:
        yield await cluster.node(heartbeat_ttl=UNIT), admin
    finally:
        admin.close()
        await cluster.close()
        server.stop()


async def test_a_failed_uncount_is_set_right_on_the_next_heartbeat(tmp_path: Path) -> None:
    """An uncount that fails while Redis keeps its data (here, scripts refused for a moment)
    would keep a member that left counted for as long as its node lives; the node's next
    heartbeat replaces the channel's count with what is true on the node."""
    async with lone_node(tmp_path, "c8ws-resync:") as (a, admin):
        key = new_channel()
        assert await a.broker.add_connection(key, "a:1") == 1
        assert await a.broker.add_connection(key, "a:2") == 2
        with scripts_refused(admin), pytest.raises(BrokerError):
            await a.broker.remove_connection(key, "a:2")
        assert await a.broker.count_connections(key) == 2  # Redis still counts it
        assert await until_async(lambda: _count_is(a, key, 1), 10)


async def test_a_failed_restore_is_tried_again_on_the_next_heartbeat(tmp_path: Path) -> None:
    """Redis loses everything and the restore on the heartbeat that finds out fails (here,
    scripts refused for a moment): that heartbeat set the node's key all the same, so the next
    one must still restore, or the node's members stay uncounted and out of rosters for good."""
    async with lone_node(tmp_path, "c8ws-retry:") as (a, admin):
        key = new_channel()
        assert await a.broker.add_connection(key, "a:1") == 1
        await a.presence.join(key, "a:1", "u-ann", "ann")
        with scripts_refused(admin):
            admin.flushall()
            # Two heartbeats: the first finds its key gone, and its restore is refused.
            await asyncio.sleep(UNIT * 2 / 3 + 0.1)
        assert await until_async(lambda: _count_is(a, key, 1), 10)
        assert await until_async(lambda: _bob_finds_ann(a, key, "a:2"), 10)


async def test_a_redis_restored_from_an_old_snapshot_never_repeats_a_seq(
    tmp_path: Path,
) -> None:
    """Redis restarts from a snapshot older than the seqs it handed out since: once the nodes
    have subscribed again, seqs continue above every seq they delivered and the store's last
    one, in a new epoch that took over from the snapshot's."""
    require_redis_server()
    server = RedisServer(tmp_path).start()
    cluster = Cluster("redis", server.url, "c8ws-snapshot:")
    try:
        a, b = await cluster.node(), await cluster.node()
        key = new_channel()
        for peer in (a, b):
            await peer.broker.raise_seq(key, 0)
            await peer.broker.subscribe(key)
        await publish(a, key)
        await publish(a, key)
        with redis.Redis(port=server.port) as client:
            client.save()  # the snapshot: seq 2
        for _ in range(6):
            await publish(a, key)
        assert await until(lambda: b.seqs == list(range(1, 9)))
        a.stored[key] = b.stored[key] = 10  # persistent records no node delivered
        old = a.broker.epoch(key)

        server.stop()
        server = RedisServer(tmp_path, server.port).start()
        assert await until(lambda: old not in (a.broker.epoch(key), b.broker.epoch(key)), 20)
        assert a.broker.takeover(key, old) == b.broker.takeover(key, old) == 10
        after = await publish(b, key)
        assert after.seq == 11
        assert await until(lambda: a.records[-1:] == [after])
    finally:
        await cluster.close()
        server.stop()


async def test_a_channel_subscribed_again_while_the_store_is_down_delivers_once_it_is_back(
    tmp_path: Path,
) -> None:
    """Redis restarts empty while the store cannot answer either: the node keeps trying to
    settle the channel, and its records flow again once the store is back."""
    require_redis_server()
    server = RedisServer(tmp_path).start()
    cluster = Cluster("redis", server.url, "c8ws-store-down:")
    try:
        a, b = await cluster.node(), await cluster.node()
        key = new_channel()
        await a.broker.raise_seq(key, 0)
        await a.broker.subscribe(key)
        first = await publish(b, key)
        assert await until(lambda: a.records == [first])
        a.store_down = True

        server.stop()
        server = RedisServer(tmp_path, server.port).start()
        assert await until(lambda: a.store_failures >= 3, 20)  # failed, and tried again
        a.store_down = False

        assert await until_async(lambda: _delivered_again(a, b, key), 20)
        assert a.records[1].seq > first.seq
    finally:
        await cluster.close()
        server.stop()


async def _delivered_again(a: Peer, b: Peer, key: ChannelKey) -> bool:
    """A record published through `b` reaches `a` again (after Redis came back)."""
    try:
        await publish(b, key)
    except BrokerError:
        return False
    return await until(lambda: len(a.records) > 1, 0.2)


async def _bob_finds_ann(peer: Peer, key: ChannelKey, member_id: str) -> bool:
    """Whether bob, joining on `peer` and leaving again, finds ann in the roster. In either order:
    a bob who joined before ann was restored stays first while he keeps coming back within his
    grace period."""
    try:
        roster = await peer.presence.join(key, member_id, "u-bob", None)
    except BrokerError:
        return False
    await peer.presence.leave(key, member_id)
    return sorted(roster, key=lambda member: member.uuid) == [ANN, BOB]


async def _count_is(peer: Peer, key: ChannelKey, expected: int) -> bool:
    try:
        return await peer.broker.count_connections(key) == expected
    except BrokerError:
        return False
