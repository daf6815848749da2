"""The Redis broker: many nodes (Hypercorn workers or hosts) share channel positions, records,
connection counts and presence through one Redis server (not Redis Cluster: the scripts touch
keys they compute). The key layout and the scripts are in `app.broker.redis_engine`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import secrets
from collections import deque
from collections.abc import Iterator
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from app.broker.base import (
    REORDER_WINDOW,
    Broker,
    BrokerError,
    BrokerState,
    ChannelOrder,
    LastStored,
    Presence,
    PresenceHandler,
    RecordHandler,
)
from app.broker.redis_engine import CONNECTIONS, POSITION, Keys, channel_tag, engine_errors
from app.broker.redis_presence import RedisPresence, decode_event
from app.records import ChannelKey, Record

log = logging.getLogger(__name__)

HEARTBEAT_TTL = 10.0
"""Seconds after its last heartbeat that a node's connections stop being counted."""

ENGINE_TIMEOUT = 5.0
"""Seconds to wait for Redis to answer (a command, or a subscription's confirmation)."""

RECONNECT_CAP = 0.5
"""Longest pause, in seconds, between two attempts of the pub/sub reader to reconnect: records
published before it is back are missed by this node, so it keeps trying often."""

_FIELDS = tuple(field.name for field in dataclasses.fields(Record))


def encode_record(record: Record) -> bytes:
    """The record as it crosses Redis: JSON of every field, a binary frame in base64."""
    fields = {name: getattr(record, name) for name in _FIELDS}
    if record.binary is not None:
        fields["binary"] = base64.b64encode(record.binary).decode("ascii")
    try:
        return orjson.dumps(fields)
    except TypeError as error:
        raise BrokerError(f"record {record.seq} of {record.key} is not JSON: {error}") from error


def decode_record(fields: dict[str, Any]) -> Record:
    """The Record `encode_record` was given (parsed from its JSON), every field equal."""
    if fields["binary"] is not None:
        fields["binary"] = base64.b64decode(fields["binary"])
    return Record(**fields)


@dataclasses.dataclass
class _Subscription:
    key: ChannelKey
    order: ChannelOrder


@dataclasses.dataclass(frozen=True)
class _Takeover:
    """What this node learnt of how the channel's current epoch began."""

    base: int
    prev: str


class RedisBroker(Broker):
    """One command connection pool and one pub/sub connection per node; the pub/sub connection
    subscribes only to channels this node has members in.

    Counts heal themselves: each node refreshes its heartbeat every `heartbeat_ttl / 3`, counting
    skips (and deletes) the members of nodes whose heartbeat expired, and a node that finds its
    own heartbeat gone (Redis restarted, or it stalled) registers its members again.

    After a dropped connection the pub/sub reader reconnects and subscribes again; records
    published meanwhile are missed by this node (at most once; a client resuming with `since`
    gets the persistent ones back from the store). Each channel subscribed again holds its
    records until this node has settled the channel's position with what it saw (see `POSITION`
    in `app.broker.redis_engine`): a Redis that came back empty gets positions above every seq
    the nodes delivered, and the node learns the epoch its next records belong to. Until every
    node that delivered records has settled, a position restored by a node that saw less can
    repeat seqs; the first settling node that saw more starts another epoch above them.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "c8ws:",
        heartbeat_ttl: float = HEARTBEAT_TTL,
        reorder_window: float = REORDER_WINDOW,
    ) -> None:
        # A short retry: a node is better off failing a publish fast than stalling its members.
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
            socket_connect_timeout=ENGINE_TIMEOUT,
            socket_timeout=ENGINE_TIMEOUT,
            socket_keepalive=True,
        )
        self.node_id = secrets.token_hex(6)
        self._keys = Keys(prefix, self.node_id)
        self._ttl_ms = max(1, round(heartbeat_ttl * 1000))
        self._beat_every = heartbeat_ttl / 3
        self._window = reorder_window
        self._state = BrokerState.NEW
        self._handler: RecordHandler | None = None
        self._last_stored: LastStored | None = None
        self._pubsub: PubSub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._settling: set[asyncio.Task[None]] = set()
        self._subscriptions: dict[bytes, _Subscription] = {}  # by pub/sub channel name
        self._confirmations: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._epochs: dict[ChannelKey, str] = {}
        self._takeovers: dict[ChannelKey, _Takeover] = {}
        self._floors: dict[ChannelKey, int] = {}  # the highest seq seen per channel
        self._members: dict[ChannelKey, set[str]] = {}  # this node's counted members
        self._position = self._redis.register_script(POSITION)
        self._connections = self._redis.register_script(CONNECTIONS)
        self._presence: RedisPresence | None = None
        self._presence_handler: PresenceHandler | None = None

    # lifecycle ----------------------------------------------------------------------------------

    async def start(self, handler: RecordHandler, last_stored: LastStored) -> None:
        self._state.require(BrokerState.NEW, "start")
        try:
            await self._redis.set(self._keys.beat, b"1", px=self._ttl_ms)
            pubsub = self._redis.pubsub()
            await pubsub.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        except (RedisError, OSError) as error:
            await self._redis.aclose()
            self._state = BrokerState.CLOSED
            raise BrokerError(f"cannot reach Redis: {error}") from error
        self._pubsub = pubsub
        self._handler = handler
        self._last_stored = last_stored
        self._state = BrokerState.STARTED
        self._tasks = [
            asyncio.create_task(self._read(pubsub), name="redis-broker-reader"),
            asyncio.create_task(self._beat(), name="redis-broker-heartbeat"),
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
            except (RedisError, OSError) as error:
                log.warning("could not remove this node's connections from Redis: %s", error)
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()

    async def _forget_node(self) -> None:
        """A clean exit: stop counting this node's members now, not when its heartbeat expires."""
        async with self._redis.pipeline(transaction=False) as pipe:
            if self._presence is not None:
                await self._presence.forget(pipe)
            for key in self._members:
                pipe.delete(self._keys.per_node("members", key))
                pipe.srem(self._keys.of("nodes", key), self.node_id)
            pipe.delete(self._keys.beat)
            await pipe.execute()
        self._members.clear()

    # positions ----------------------------------------------------------------------------------

    def epoch(self, key: ChannelKey) -> str:
        epoch = self._epochs.get(key)
        if epoch is None:
            raise BrokerError(f"the epoch of {key} is not known yet: call raise_seq first")
        return epoch

    def takeover(self, key: ChannelKey, epoch: str) -> int | None:
        takeover = self._takeovers.get(key)
        if takeover is None or not takeover.prev or takeover.prev != epoch:
            return None
        return takeover.base

    async def raise_seq(self, key: ChannelKey, at_least: int) -> None:
        # `at_least` is the store's last seq, so a missing position may be made from it directly.
        await self._settle(key, at_least, create=True)

    async def last_seq(self, key: ChannelKey) -> int:
        with self._engine("read a seq"):
            position: list[Any] = await self._redis.hmget(
                self._keys.of("pos", key), ["seq", "epoch", "base", "prev"])
        if position[0] is None:
            return 0
        self._learn(key, position)
        return int(position[0])

    async def next_seq(self, key: ChannelKey) -> int:
        return await self._settle(key, 0, reserve=True)

    async def _settle(self, key: ChannelKey, at_least: int, *, create: bool = False,
                      reserve: bool = False) -> int:
        """Run `POSITION` with what this node saw; a position Redis lost is made again above the
        store's last seq too. Returns the channel's seq afterwards."""
        with self._engine("settle a position"):
            position = await self._run_position(key, at_least, create, reserve)
            if position is None:
                assert self._last_stored is not None
                stored = await self._last_stored(key)
                position = await self._run_position(key, max(at_least, stored), True, reserve)
                assert position is not None  # made when missing
        self._learn(key, position)
        return int(position[0])

    async def _run_position(self, key: ChannelKey, at_least: int, create: bool,
                            reserve: bool) -> list[bytes] | None:
        top = max(at_least, self._floors.get(key, 0))
        result: list[bytes] | None = await self._position(
            keys=[self._keys.of("pos", key)],
            args=[top, self._epochs.get(key, ""), secrets.token_hex(6), int(create),
                  int(reserve)],
        )
        return result

    def _learn(self, key: ChannelKey, position: list[bytes]) -> None:
        """Remember the channel's position as Redis answered it: seq, epoch, base, prev."""
        seq, epoch, base, prev = position
        self._epochs[key] = epoch.decode()
        self._takeovers[key] = _Takeover(int(base), prev.decode())
        self._see(key, int(seq))

    def _see(self, key: ChannelKey, seq: int) -> None:
        if self._floors.get(key, 0) < seq:
            self._floors[key] = seq

    # records ------------------------------------------------------------------------------------

    async def publish(self, record: Record) -> None:
        payload = encode_record(record)
        with self._engine("publish"):
            await self._redis.publish(self._keys.of("records", record.key), payload)

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
                last = await self._settle(key, 0)
            except BaseException:
                self._drop_waiter(name, confirmed)
                if self._subscriptions.get(name) is subscription:
                    del self._subscriptions[name]
                    subscription.order.close()
                    with contextlib.suppress(RedisError, OSError):
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
            self._see(record.key, record.seq)
            self._handler(record)

    async def _read(self, pubsub: PubSub) -> None:
        """The pub/sub reader: records to their channel's order, presence events to the node,
        confirmations to subscribers. A lost connection is retried with a short backoff;
        redis-py subscribes again on reconnect."""
        delay = 0.05
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except (RedisError, OSError) as error:
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
                # Subscribed again after a reconnect: Redis may have lost the position.
                subscription.order.resync()
                task = asyncio.create_task(self._resume(name, subscription),
                                           name="redis-broker-resume")
                self._settling.add(task)
                task.add_done_callback(self._settling.discard)

    async def _resume(self, name: bytes, subscription: _Subscription) -> None:
        """Settle a channel subscribed again with what this node saw, then let its records
        through (from the lowest: numbering may have started again in a new epoch)."""
        try:
            await self._settle(subscription.key, 0)
        except BrokerError as error:
            log.warning("could not settle the position of %s after a reconnect: %s",
                        subscription.key, error)
        if self._subscriptions.get(name) is subscription:
            subscription.order.begin(None)

    def _drop_waiter(self, name: bytes, waiter: asyncio.Future[None]) -> None:
        waiters = self._confirmations.get(name)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._confirmations[name]

    # connections --------------------------------------------------------------------------------

    async def add_connection(self, key: ChannelKey, member_id: str) -> int:
        members = self._members.setdefault(key, set())
        members.add(member_id)
        try:
            return await self._count("add", key, member_id)
        except BrokerError:
            # Not counted: don't let a heartbeat register it later either.
            members.discard(member_id)
            if not members:
                self._members.pop(key, None)
            raise

    async def remove_connection(self, key: ChannelKey, member_id: str) -> int:
        if self._state is BrokerState.CLOSED:
            return 0
        members = self._members.get(key)
        if members is not None:
            members.discard(member_id)
            if not members:
                del self._members[key]
        return await self._count("remove", key, member_id)

    async def count_connections(self, key: ChannelKey) -> int:
        return await self._count("count", key, "")

    async def _count(self, op: str, key: ChannelKey, member_id: str) -> int:
        with self._engine("count connections"):
            total = await self._connections(
                keys=[self._keys.of("nodes", key)],
                args=[op, self.node_id, member_id, f"{self._keys.prefix}members:",
                      f":{channel_tag(key)}", self._keys.beats],
            )
        return int(total)

    async def _beat(self) -> None:
        """Keep this node's heartbeat alive; if it had expired, count this node's members again.
        Then let presence restore and sweep."""
        while True:
            await asyncio.sleep(self._beat_every)
            try:
                previous = await self._redis.set(
                    self._keys.beat, b"1", px=self._ttl_ms, get=True)
                if previous is None and self._members:
                    log.warning("this node's heartbeat had expired; registering its members again")
                    await self._register_members()
                if self._presence is not None:
                    await self._presence.beat(expired=previous is None)
            except (RedisError, OSError) as error:
                log.warning("Redis heartbeat failed: %s", error)
            except Exception:
                log.exception("Redis heartbeat failed")

    async def _register_members(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, members in list(self._members.items()):
                pipe.sadd(self._keys.per_node("members", key), *members)
                pipe.sadd(self._keys.of("nodes", key), self.node_id)
            await pipe.execute()

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
