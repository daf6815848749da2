"""The Redis broker: many nodes (Hypercorn workers or hosts) share channel positions, records and
connection counts through one Redis server (not Redis Cluster: the scripts touch keys they
compute).

Layout, everything under the key prefix (default `c8ws:`), a channel written as
`<len(app)>:<app>:<channel>` so no two channels share a key:
- `seq:<channel>` the channel's last reserved seq (INCR); `epoch:<channel>` its generation.
- `records:<channel>` the pub/sub channel its records cross as JSON.
- `node:<node>` this node's heartbeat, expiring after `heartbeat_ttl`.
- `nodes:<channel>` the nodes with members there; `members:<node>:<channel>` their member ids.
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
    RecordHandler,
)
from app.records import ChannelKey, Record

log = logging.getLogger(__name__)

HEARTBEAT_TTL = 10.0
"""Seconds after its last heartbeat that a node's connections stop being counted."""

ENGINE_TIMEOUT = 5.0
"""Seconds to wait for Redis to answer (a command, or a subscription's confirmation)."""

_FIELDS = tuple(field.name for field in dataclasses.fields(Record))

# KEYS: seq, epoch. ARGV: at_least, a fresh epoch. Returns the channel's epoch.
_RAISE_SEQ = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('SET', KEYS[2], ARGV[2], 'NX')
return redis.call('GET', KEYS[2])
"""

# KEYS: seq, epoch. ARGV: the highest seq this node knows of, a fresh epoch. Returns {seq, epoch}.
# No epoch means Redis lost the channel (a restart without persistence): start a new generation,
# and continue above every seq this node has seen so seqs never repeat.
_NEXT_SEQ = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  local current = tonumber(redis.call('GET', KEYS[1]) or '0')
  if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
  redis.call('SET', KEYS[2], ARGV[2])
end
return {redis.call('INCR', KEYS[1]), redis.call('GET', KEYS[2])}
"""

# KEYS: nodes:<channel>. ARGV: 'add' | 'remove' | 'count', node, member, `members:` prefix,
# `:<channel>` suffix, `node:` prefix. Returns the members of live nodes; forgets dead nodes.
_CONNECTIONS = """
local nodes, op, node, member = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local members, suffix, beats = ARGV[4], ARGV[5], ARGV[6]
if op == 'add' then
  redis.call('SADD', members .. node .. suffix, member)
  redis.call('SADD', nodes, node)
elseif op == 'remove' then
  redis.call('SREM', members .. node .. suffix, member)
  if redis.call('SCARD', members .. node .. suffix) == 0 then redis.call('SREM', nodes, node) end
end
local total = 0
for _, each in ipairs(redis.call('SMEMBERS', nodes)) do
  if redis.call('EXISTS', beats .. each) == 1 then
    total = total + redis.call('SCARD', members .. each .. suffix)
  else
    redis.call('DEL', members .. each .. suffix)
    redis.call('SREM', nodes, each)
  end
end
return total
"""


def encode_record(record: Record) -> bytes:
    """The record as it crosses Redis: JSON of every field, a binary frame in base64."""
    fields = {name: getattr(record, name) for name in _FIELDS}
    if record.binary is not None:
        fields["binary"] = base64.b64encode(record.binary).decode("ascii")
    try:
        return orjson.dumps(fields)
    except TypeError as error:
        raise BrokerError(f"record {record.seq} of {record.key} is not JSON: {error}") from error


def decode_record(payload: bytes) -> Record:
    """The Record `encode_record` was given, every field equal."""
    fields = orjson.loads(payload)
    if fields["binary"] is not None:
        fields["binary"] = base64.b64decode(fields["binary"])
    return Record(**fields)


def _channel_tag(key: ChannelKey) -> str:
    app, channel = key
    return f"{len(app)}:{app}:{channel}"


@dataclasses.dataclass
class _Subscription:
    key: ChannelKey
    order: ChannelOrder


class RedisBroker(Broker):
    """One command connection pool and one pub/sub connection per node; the pub/sub connection
    subscribes only to channels this node has members in.

    Counts heal themselves: each node refreshes its heartbeat every `heartbeat_ttl / 3`, counting
    skips (and deletes) the members of nodes whose heartbeat expired, and a node that finds its
    own heartbeat gone (Redis restarted, or it stalled) registers its members again. After a
    dropped connection the pub/sub reader reconnects and subscribes again; records published
    meanwhile are missed (at most once). A dead node's member set in a channel is deleted the
    next time any node counts that channel.
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
        self._prefix = prefix
        self._ttl_ms = max(1, round(heartbeat_ttl * 1000))
        self._beat_every = heartbeat_ttl / 3
        self._window = reorder_window
        self._state = BrokerState.NEW
        self._handler: RecordHandler | None = None
        self._pubsub: PubSub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: dict[bytes, _Subscription] = {}  # by pub/sub channel name
        self._confirmations: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._epochs: dict[ChannelKey, str] = {}
        self._floors: dict[ChannelKey, int] = {}  # the highest seq seen per channel
        self._members: dict[ChannelKey, set[str]] = {}  # this node's counted members
        self._raise_seq = self._redis.register_script(_RAISE_SEQ)
        self._next_seq = self._redis.register_script(_NEXT_SEQ)
        self._connections = self._redis.register_script(_CONNECTIONS)

    # lifecycle ----------------------------------------------------------------------------------

    async def start(self, handler: RecordHandler) -> None:
        self._state.require(BrokerState.NEW, "start")
        try:
            await self._redis.set(self._beat_key, b"1", px=self._ttl_ms)
            pubsub = self._redis.pubsub()
            await pubsub.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        except (RedisError, OSError) as error:
            await self._redis.aclose()
            self._state = BrokerState.CLOSED
            raise BrokerError(f"cannot reach Redis: {error}") from error
        self._pubsub = pubsub
        self._handler = handler
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
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
            for key in self._members:
                pipe.delete(self._members_key(self.node_id, key))
                pipe.srem(self._key("nodes", key), self.node_id)
            pipe.delete(self._beat_key)
            await pipe.execute()
        self._members.clear()

    # positions ----------------------------------------------------------------------------------

    def epoch(self, key: ChannelKey) -> str:
        epoch = self._epochs.get(key)
        if epoch is None:
            raise BrokerError(f"the epoch of {key} is not known yet: call raise_seq first")
        return epoch

    async def raise_seq(self, key: ChannelKey, at_least: int) -> None:
        with self._engine("raise a seq"):
            epoch = await self._raise_seq(
                keys=[self._key("seq", key), self._key("epoch", key)],
                args=[at_least, secrets.token_hex(6)],
            )
        self._epochs[key] = epoch.decode()
        self._see(key, at_least)

    async def last_seq(self, key: ChannelKey) -> int:
        with self._engine("read a seq"):
            value = await self._redis.get(self._key("seq", key))
        return int(value or 0)

    async def next_seq(self, key: ChannelKey) -> int:
        with self._engine("reserve a seq"):
            seq, epoch = await self._next_seq(
                keys=[self._key("seq", key), self._key("epoch", key)],
                args=[self._floors.get(key, 0), secrets.token_hex(6)],
            )
        self._epochs[key] = epoch.decode()
        self._see(key, seq)
        return int(seq)

    def _see(self, key: ChannelKey, seq: int) -> None:
        if self._floors.get(key, 0) < seq:
            self._floors[key] = seq

    # records ------------------------------------------------------------------------------------

    async def publish(self, record: Record) -> None:
        payload = encode_record(record)
        with self._engine("publish"):
            await self._redis.publish(self._key("records", record.key), payload)

    async def subscribe(self, key: ChannelKey) -> None:
        name = self._key("records", key).encode()
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
                last, epoch = await self._redis.mget(
                    [self._key("seq", key), self._key("epoch", key)])
            except BaseException:
                self._drop_waiter(name, confirmed)
                if self._subscriptions.get(name) is subscription:
                    del self._subscriptions[name]
                    subscription.order.close()
                    with contextlib.suppress(RedisError, OSError):
                        await self._pubsub.unsubscribe(name)
                raise
        if isinstance(epoch, bytes):
            self._epochs[key] = epoch.decode()
        if self._subscriptions.get(name) is subscription:  # not unsubscribed meanwhile
            subscription.order.begin(int(last or 0))

    async def unsubscribe(self, key: ChannelKey) -> None:
        name = self._key("records", key).encode()
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
        """The pub/sub reader: records to their channel's order, confirmations to subscribers.
        A lost connection is retried with backoff; redis-py subscribes again on reconnect."""
        delay = 0.05
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except (RedisError, OSError) as error:
                log.warning("Redis pub/sub connection lost (%s); retrying in %.2fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
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
                record = decode_record(message["data"])
            except (ValueError, TypeError, KeyError):
                log.warning("dropped a malformed record on %r", name, exc_info=True)
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
                # Subscribed again after a reconnect: positions may have been reset.
                subscription.order.resync()

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
                keys=[self._key("nodes", key)],
                args=[op, self.node_id, member_id, f"{self._prefix}members:",
                      f":{_channel_tag(key)}", f"{self._prefix}node:"],
            )
        return int(total)

    async def _beat(self) -> None:
        """Keep this node's heartbeat alive; if it had expired, count this node's members again."""
        while True:
            await asyncio.sleep(self._beat_every)
            try:
                previous = await self._redis.set(
                    self._beat_key, b"1", px=self._ttl_ms, get=True)
                if previous is None and self._members:
                    log.warning("this node's heartbeat had expired; registering its members again")
                    await self._register_members()
            except (RedisError, OSError) as error:
                log.warning("Redis heartbeat failed: %s", error)
            except Exception:
                log.exception("Redis heartbeat failed")

    async def _register_members(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, members in list(self._members.items()):
                pipe.sadd(self._members_key(self.node_id, key), *members)
                pipe.sadd(self._key("nodes", key), self.node_id)
            await pipe.execute()

    # keys ---------------------------------------------------------------------------------------

    @property
    def _beat_key(self) -> str:
        return f"{self._prefix}node:{self.node_id}"

    def _key(self, kind: str, key: ChannelKey) -> str:
        return f"{self._prefix}{kind}:{_channel_tag(key)}"

    def _members_key(self, node: str, key: ChannelKey) -> str:
        return f"{self._prefix}members:{node}:{_channel_tag(key)}"

    @contextlib.contextmanager
    def _engine(self, action: str) -> Iterator[None]:
        """Refuse when not started; turn the driver's failures into `BrokerError`."""
        self._state.require(BrokerState.STARTED, action)
        try:
            yield
        except (RedisError, OSError, TimeoutError) as error:
            raise BrokerError(f"Redis: cannot {action}: {error or type(error).__name__}") from error
