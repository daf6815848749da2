"""The Redis broker: many nodes (Hypercorn workers or hosts) share channel positions, records,
connection counts and presence through one Redis server (not Redis Cluster: the scripts touch
keys they compute). The key layout and the scripts are in `app.broker.redis_engine`; what this
node keeps of positions, counts and presence is in `redis_positions`, `redis_connections` and
`redis_presence`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from app.broker.base import (
    REORDER_WINDOW,
    Broker,
    BrokerError,
    BrokerState,
    ChannelOrder,
    CountsChanged,
    LastStored,
    Presence,
    PresenceHandler,
    RecordHandler,
)
from app.broker.redis_connections import Connections
from app.broker.redis_engine import (
    DRIVER_ERRORS,
    Keys,
    decode_record,
    encode_record,
    engine_errors,
)
from app.broker.redis_positions import Positions
from app.broker.redis_presence import RedisPresence, decode_event
from app.records import ChannelKey, Record

log = logging.getLogger(__name__)

HEARTBEAT_TTL = 10.0
"""Seconds after its last heartbeat that a node's connections stop being counted."""

ENGINE_TIMEOUT = 5.0
"""Seconds to wait for Redis to answer (a command, or a subscription's confirmation)."""

POOL_SIZE = 64
"""Connections to Redis per node; commands beyond wait for one (at most ENGINE_TIMEOUT)."""

RECONNECT_CAP = 0.5
"""Longest pause, in seconds, between two attempts of the pub/sub reader to reconnect: records
published before it is back are missed by this node, so it keeps trying often."""

RESUME_CAP = 5.0
"""Longest pause, in seconds, between two attempts to settle a channel subscribed again."""


def _client(url: str, connections: int) -> aioredis.Redis:
    """A client over a pool of `connections`. A blocking pool: when every connection is busy
    (a thousand members joining at once), a command waits for one instead of failing with "too
    many connections". A short retry: a node is better off failing a publish fast than stalling
    its members."""
    return aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=connections,
            timeout=ENGINE_TIMEOUT,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
            socket_connect_timeout=ENGINE_TIMEOUT,
            socket_timeout=ENGINE_TIMEOUT,
            socket_keepalive=True,
        ))


@dataclasses.dataclass
class _Subscription:
    key: ChannelKey
    order: ChannelOrder
    resuming: asyncio.Task[None] | None = None  # settling it after a reconnect


class RedisBroker(Broker):
    """One command connection pool, one pub/sub connection and one heartbeat connection per
    node; the pub/sub connection subscribes only to channels this node has members in.

    Counts heal themselves: each node refreshes its heartbeat every `heartbeat_ttl / 3`, counting
    skips (and deletes) the members of nodes whose heartbeat expired, a node that finds its
    own heartbeat gone (Redis restarted, or it stalled) registers its members again, and on each
    beat a node sets right the channels where counting or uncounting one of its members failed.

    After a dropped connection the pub/sub reader reconnects and subscribes again; records
    published meanwhile are missed by this node (at most once; a client resuming with `since`
    gets the persistent ones back from the store). Each channel subscribed again holds its
    records until this node has settled the channel's position with what it saw and the store's
    last seq (see `POSITION` in `app.broker.redis_engine`): a Redis that came back empty, or
    from an older copy, gets positions above every seq the nodes delivered, and the node learns
    the epoch its next records belong to. Until every node that delivered records has settled, a
    position restored by a node that saw less can repeat seqs; the first settling node that saw
    more starts another epoch above them.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "c8ws:",
        heartbeat_ttl: float = HEARTBEAT_TTL,
        reorder_window: float = REORDER_WINDOW,
    ) -> None:
        self._redis = _client(url, POOL_SIZE)
        # The heartbeat has a connection of its own: when every pooled one is busy (an
        # overload), it would wait for one and fail, and the node, taken for dead, would have its
        # members uncounted until it registered them all again.
        self._beat_redis = _client(url, 1)
        self.node_id = secrets.token_hex(6)
        self._keys = Keys(prefix, self.node_id)
        self._ttl_ms = max(1, round(heartbeat_ttl * 1000))
        self._beat_every = heartbeat_ttl / 3
        self._window = reorder_window
        self._state = BrokerState.NEW
        self._handler: RecordHandler | None = None
        self._counts_changed: CountsChanged | None = None
        self._pubsub: PubSub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._settling: set[asyncio.Task[None]] = set()
        self._subscriptions: dict[bytes, _Subscription] = {}  # by pub/sub channel name
        self._confirmations: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._positions = Positions(self._redis, self._keys)
        self._connections = Connections(self._redis, self._keys)
        self._presence: RedisPresence | None = None
        self._presence_handler: PresenceHandler | None = None
        self._expiries = 0  # heartbeats that found this node's key gone
        self._restored = 0  # of those, how many an upkeep has since restored after
        self._beaten = asyncio.Event()  # a heartbeat went out since the upkeep last started

    # lifecycle ----------------------------------------------------------------------------------

    async def start(self, handler: RecordHandler, last_stored: LastStored,
                    counts_changed: CountsChanged | None = None) -> None:
        self._state.require(BrokerState.NEW, "start")
        try:
            await self._redis.set(self._keys.beat, b"1", px=self._ttl_ms)
            pubsub = self._redis.pubsub()
            await pubsub.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        except DRIVER_ERRORS as error:
            await self._redis.aclose()
            await self._beat_redis.aclose()
            self._state = BrokerState.CLOSED
            raise BrokerError(f"cannot reach Redis: {error}") from error
        # Called on every later connect: Redis may have restarted, empty or from an older copy.
        # (redis-py types the pub/sub's connection as always None.)
        pubsub.connection.register_connect_callback(  # type: ignore[attr-defined]
            self._reconnected)
        self._pubsub = pubsub
        self._handler = handler
        self._counts_changed = counts_changed
        self._positions.last_stored = last_stored
        self._state = BrokerState.STARTED
        self._tasks = [
            asyncio.create_task(self._read(pubsub), name="redis-broker-reader"),
            asyncio.create_task(self._beat(), name="redis-broker-heartbeat"),
            asyncio.create_task(self._upkeep(), name="redis-broker-upkeep"),
        ]

    async def close(self) -> None:
        if self._state is BrokerState.CLOSED:
            return
        started = self._state is BrokerState.STARTED
        self._state = BrokerState.CLOSED
        self._handler = None
        self._presence_handler = None
        tasks = [*self._tasks, *self._settling]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._presence is not None:
            self._presence.close()
        for subscription in self._subscriptions.values():
            subscription.order.close()
        self._subscriptions.clear()
        for waiters in self._confirmations.values():
            for waiter in waiters:
                waiter.cancel()
        self._confirmations.clear()
        if started:
            try:
                await self._forget_node()
            except DRIVER_ERRORS as error:
                log.warning("could not remove this node's connections from Redis: %s", error)
        if self._pubsub is not None:
            # untyped in older redis releases, typed in newer ones: either passes
            await self._pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
        await self._redis.aclose()
        await self._beat_redis.aclose()

    async def _forget_node(self) -> None:
        """A clean exit: stop counting this node's members now, not when its heartbeat expires."""
        async with self._redis.pipeline(transaction=False) as pipe:
            if self._presence is not None:
                await self._presence.forget(pipe)
            await self._connections.forget(pipe)
            pipe.delete(self._keys.beat)
            await pipe.execute()

    def _reconnected(self, connection: object) -> None:
        """The pub/sub connection was made again (redis-py calls this on every reconnect)."""
        self._positions.reconnected()

    # positions ----------------------------------------------------------------------------------

    def epoch(self, key: ChannelKey) -> str:
        return self._positions.epoch(key)

    def takeover(self, key: ChannelKey, epoch: str) -> int | None:
        return self._positions.takeover(key, epoch)

    async def raise_seq(self, key: ChannelKey, at_least: int) -> None:
        # `at_least` is the store's last seq, so a missing position may be made from it directly.
        with self._engine("settle a position"):
            await self._positions.settle(key, at_least, create=True)

    async def last_seq(self, key: ChannelKey) -> int:
        with self._engine("read a seq"):
            return await self._positions.last_seq(key)

    async def next_seq(self, key: ChannelKey) -> int:
        with self._engine("reserve a seq"):
            return await self._positions.settle(key, 0, reserve=True)

    async def _settle(self, key: ChannelKey) -> int:
        with self._engine("settle a position"):
            return await self._positions.settle(key, 0)

    # records ------------------------------------------------------------------------------------

    async def publish(self, record: Record) -> None:
        payload = encode_record(record)
        with self._engine("publish"):
            await self._redis.publish(self._keys.of("records", record.key), payload)

    async def publish_all(self, records: Sequence[Record]) -> None:
        """One round trip for the batch: its PUBLISHes pipelined, in order, on one connection."""
        pipeline = self._redis.pipeline(transaction=False)
        for record in records:
            pipeline.publish(self._keys.of("records", record.key), encode_record(record))
        with self._engine("publish"):
            await pipeline.execute()

    async def subscribe(self, key: ChannelKey) -> None:
        name = self._keys.of("records", key).encode()
        with self._engine("subscribe"):
            if name in self._subscriptions:
                return
            assert self._pubsub is not None
            subscription = _Subscription(key, ChannelOrder(self._deliver, self._window))
            self._subscriptions[name] = subscription
            confirmed = asyncio.get_running_loop().create_future()
            self._confirmations.setdefault(name, deque()).append(confirmed)
            try:
                await self._pubsub.subscribe(name)
                # Read the position only once Redis confirms: every seq reserved after this read
                # is published after the subscription, so it reaches this node.
                await asyncio.wait_for(asyncio.shield(confirmed), ENGINE_TIMEOUT)
                last = await self._settle(key)
            except BaseException:
                self._drop_waiter(name, confirmed)
                if self._subscriptions.get(name) is subscription:
                    del self._subscriptions[name]
                    subscription.order.close()
                    with contextlib.suppress(*DRIVER_ERRORS):
                        await self._pubsub.unsubscribe(name)
                raise
        if self._subscriptions.get(name) is subscription:  # not unsubscribed meanwhile
            subscription.order.begin(last)

    async def unsubscribe(self, key: ChannelKey) -> None:
        name = self._keys.of("records", key).encode()
        subscription = self._subscriptions.pop(name, None)
        if subscription is None or self._state is not BrokerState.STARTED:
            return
        subscription.order.close()
        assert self._pubsub is not None
        with self._engine("unsubscribe"):
            await self._pubsub.unsubscribe(name)

    def _deliver(self, record: Record) -> None:
        if self._state is BrokerState.STARTED and self._handler is not None:
            self._positions.see(record.key, record.seq)
            self._handler(record)

    async def _read(self, pubsub: PubSub) -> None:
        """The pub/sub reader: records to their channel's order, presence events to the node,
        confirmations to subscribers. A lost connection is retried with a short backoff;
        redis-py subscribes again on reconnect."""
        delay = 0.05
        # Until closed, not only until cancelled: a cancellation can reach a driver call as a
        # timeout or connection error, which this loop would otherwise survive.
        while self._state is BrokerState.STARTED:
            try:
                message = await pubsub.get_message(timeout=None)
            except DRIVER_ERRORS as error:
                log.warning("Redis pub/sub connection lost (%s); retrying in %.2fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_CAP)
                continue
            except Exception:
                log.exception("Redis pub/sub reader failed; retrying")
                await asyncio.sleep(delay)
                continue
            delay = 0.05
            if message is not None:
                self._on_message(message)

    def _on_message(self, message: dict[str, Any]) -> None:
        kind, name = message["type"], message["channel"]
        if kind == "message":
            subscription = self._subscriptions.get(name)
            if subscription is None:
                return  # unsubscribed while it was on its way
            try:
                fields = orjson.loads(message["data"])
                if "connections" in fields:  # the CONNECTIONS script's notice
                    if self._counts_changed is not None:
                        self._counts_changed(subscription.key)
                    return
                if "presence" in fields:
                    if self._presence_handler is not None:
                        self._presence_handler(decode_event(subscription.key, fields))
                    return
                record = decode_record(fields)
            except (ValueError, TypeError, KeyError):
                log.warning("dropped a malformed message on %r", name, exc_info=True)
                return
            subscription.order.push(record)
        elif kind == "subscribe":
            waiters = self._confirmations.get(name)
            if waiters:
                waiter = waiters.popleft()
                if not waiters:
                    del self._confirmations[name]
                if not waiter.done():
                    waiter.set_result(None)
            elif (subscription := self._subscriptions.get(name)) is not None:
                # Subscribed again after a reconnect: Redis may have lost the position. One
                # resume at a time: an earlier one beginning late would reorder the records.
                subscription.order.resync()
                if subscription.resuming is not None:
                    subscription.resuming.cancel()
                task = asyncio.create_task(self._resume(name, subscription),
                                           name="redis-broker-resume")
                subscription.resuming = task
                self._settling.add(task)
                task.add_done_callback(self._settling.discard)

    async def _resume(self, name: bytes, subscription: _Subscription) -> None:
        """Settle a channel subscribed again with what this node saw and the store holds, then
        let its records through (from the lowest: numbering may have started again in a new
        epoch). Until it has settled, trying again with a backoff, the channel only holds."""
        delay = 0.05
        while self._subscriptions.get(name) is subscription:
            try:
                await self._settle(subscription.key)
            except Exception:
                log.warning("could not settle the position of %s after a reconnect; retrying "
                            "in %.2fs", subscription.key, delay, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESUME_CAP)
                continue
            subscription.order.begin(None)
            return

    def _drop_waiter(self, name: bytes, waiter: asyncio.Future[None]) -> None:
        waiters = self._confirmations.get(name)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._confirmations[name]

    # connections --------------------------------------------------------------------------------

    async def add_connection(self, key: ChannelKey, member_id: str) -> int:
        with self._engine("count a connection"):
            return await self._connections.add(key, member_id)

    async def remove_connection(self, key: ChannelKey, member_id: str) -> int:
        if self._state is BrokerState.CLOSED:
            return 0
        with self._engine("uncount a connection"):
            return await self._connections.remove(key, member_id)

    async def count_connections(self, key: ChannelKey) -> int:
        with self._engine("count connections"):
            return await self._connections.count(key)

    async def _beat(self) -> None:
        """Keep this node's heartbeat alive, on a connection of its own and apart from the
        upkeep: nothing waiting for the pool (the upkeep, an overload's commands) holds it back
        past its TTL. Until closed, like the reader."""
        while self._state is BrokerState.STARTED:
            await asyncio.sleep(self._beat_every)
            try:
                previous = await self._beat_redis.set(
                    self._keys.beat, b"1", px=self._ttl_ms, get=True)
            except DRIVER_ERRORS as error:
                log.warning("Redis heartbeat failed: %s", error)
                continue
            except Exception:
                log.exception("Redis heartbeat failed")
                continue
            if previous is None:
                if self._connections:
                    log.warning("this node's heartbeat had expired; registering its members again")
                self._expiries += 1
            self._beaten.set()

    async def _upkeep(self) -> None:
        """After each heartbeat (once, when several went out while it ran): count this node's
        members again after their heartbeat had expired (until one upkeep has done it whole),
        set right the channels where counting one failed, then let presence restore and sweep.
        Until closed."""
        while self._state is BrokerState.STARTED:
            await self._beaten.wait()
            self._beaten.clear()
            expiries = self._expiries
            expired = self._restored < expiries
            try:
                if expired and self._connections:
                    await self._connections.restore()
                await self._connections.resync()
                if self._presence is not None:
                    await self._presence.beat(expired=expired)
                self._restored = expiries
            except DRIVER_ERRORS as error:
                log.warning("Redis upkeep failed: %s", error)
            except Exception:
                log.exception("Redis upkeep failed")

    # presence -----------------------------------------------------------------------------------

    def presence(self, grace: float, handler: PresenceHandler) -> Presence:
        self._presence = RedisPresence(self._redis, self._keys, grace)
        self._presence_handler = handler
        return self._presence

    @contextlib.contextmanager
    def _engine(self, action: str) -> Iterator[None]:
        """Refuse when not started; turn the driver's failures into `BrokerError`."""
        self._state.require(BrokerState.STARTED, action)
        with engine_errors(action):
            yield
