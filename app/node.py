"""This process: the publish pipeline (stamp -> store if persistent -> broker) and the broker's
handler that hands every record to the local hub. Routes talk to the node, never to the hub,
broker or store directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from app.broker.base import Broker, BrokerError, PresenceChange, PresenceEvent, PresenceMember
from app.config import Settings
from app.errors import CloseCode, NotStored, Refusal
from app.hub import Hub
from app.limits import Limits, TokenBucket, limits_for
from app.member import Member, Outgoing
from app.metrics import NodeStats
from app.protocol import (
    Dialect,
    Frame,
    RecordFrames,
    connections_frame,
    encode_record,
    member_event_frame,
)
from app.query import validate_query
from app.records import ChannelKey, Record, now_ms, record_id
from app.store.base import App, Store

log = logging.getLogger(__name__)

COUNTS_INTERVAL = 0.25  # seconds between coalesced `connections` frames of one channel
APP_CACHE_SECONDS = 5.0

Answer = Callable[[BaseException | None], None]  # a persistent publish's outcome, for its sender


def _wants_presence(member: Member) -> bool:
    return member.presence and member.dialect is Dialect.PIESOCKET


def _settle(outcome: asyncio.Future[None], error: BaseException | None) -> None:
    if outcome.done():  # its waiter was cancelled
        if error is not None:
            log.warning("a publish whose caller went away failed: %s", error)
        return
    if error is None:
        outcome.set_result(None)
    else:
        outcome.set_exception(error)


def _tell(answer: Answer, error: BaseException | None) -> None:
    """Call one publisher's answer; its failure must not keep the batch's others unanswered."""
    try:
        answer(error)
    except Exception:
        log.exception("answering a publish failed")


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


@dataclass
class Batch:
    """Persistent records waiting for one commit, and their senders' answers in the same order
    (two lists: a pair per record would be one more object per publish that lives until the
    commit, for the garbage collector's young passes to walk); `published` is done once every
    one of them has been handed to the broker (or answered with an error)."""

    records: list[Record]
    answers: list[Answer]
    published: asyncio.Future[None]


@dataclass
class History:
    """The records this node delivered in a channel since it subscribed at position `start`,
    kept as plain tuples: a tuple of strings and ints is untracked by the garbage collector,
    while a NamedTuple never is, and thousands per channel would lengthen every full collection
    (which stops the event loop) and bring the next one sooner."""

    start: int
    records: deque[tuple[int, Frame, str | None]]


class Node:
    """Owns the hub and the connections to the broker and the store."""

    def __init__(self, settings: Settings, store: Store, broker: Broker) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.hub = Hub()
        self.id = secrets.token_hex(4)
        self._member_ids = itertools.count(1)
        self._apps: dict[str, tuple[App, float]] = {}
        self._per_app: Counter[str] = Counter()
        self._per_ip: Counter[str] = Counter()
        self._channels_per_app: Counter[str] = Counter()
        self._seeded: set[ChannelKey] = set()
        self._dirty_counts: set[ChannelKey] = set()
        self._counts_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.stats = NodeStats()
        self.channel_messages: Counter[ChannelKey] = Counter()  # delivered here, per channel
        self.presence = broker.presence(settings.presence_grace, self._announce)
        # per app, for REST publishes: the (rate, burst) each was made for, and the bucket
        self._http_buckets: dict[str, tuple[tuple[float, int], TokenBucket]] = {}
        self.draining = asyncio.Event()  # set at shutdown: streams end, members are closed
        self._live: set[Member] = set()  # every connection until its socket is done
        self._history: dict[ChannelKey, History] = {}  # while subscribed, for recovery
        self._batches: dict[asyncio.Future[None], Batch] = {}  # by the commit they wait for
        self._storing: dict[ChannelKey, asyncio.Future[None]] = {}  # latest batch's `published`
        self._last_published: asyncio.Future[None] | None = None  # the previous batch's

    async def start(self) -> None:
        await self.broker.start(self._deliver, self._last_stored, self._count_changed)
        self._counts_task = asyncio.create_task(self._push_counts(), name="connection-counts")

    async def drain(self) -> None:
        """Close every member with 1001 and wait (bounded) until they are gone."""
        self.draining.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_timeout
        while self._live and loop.time() < deadline:
            for member in list(self._live):  # again and again: one may join while we wait
                member.close(CloseCode.GOING_AWAY, "server shutting down")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Drain the members, let committing records reach the broker, then disconnect."""
        await self.drain()
        if self._batches:  # their commits start publishing tasks, waited for next
            await asyncio.wait(list(self._batches), timeout=self.settings.shutdown_timeout)
        if self._background:
            await asyncio.wait(list(self._background), timeout=self.settings.shutdown_timeout)
        if self._counts_task is not None:
            self._counts_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._counts_task
        await self.broker.close()

    # apps ---------------------------------------------------------------------------------------

    async def app_by_key(self, key: str) -> App | None:
        """The app owning `key`; found apps are cached for a few seconds (so a `c8ws keys set`
        in another process takes effect soon, without a store read per connection)."""
        now = time.monotonic()
        cached = self._apps.get(key)
        if cached is not None and now - cached[1] < APP_CACHE_SECONDS:
            return cached[0]
        app = await self.store.app_by_key(key)
        if app is None:
            self._apps.pop(key, None)
            return None
        self._apps[key] = (app, now)
        return app

    def limits(self, app: App) -> Limits:
        return limits_for(self.settings, app.settings)

    def http_bucket(self, app_id: str, limits: Limits) -> TokenBucket:
        """The token bucket metering an app's REST publishes on this node (the rate and burst
        of one connection), made again when the app's limits change."""
        made = self._http_buckets.get(app_id)
        if made is None or made[0] != (limits.msg_rate, limits.msg_burst):
            made = (limits.msg_rate, limits.msg_burst), TokenBucket(limits.msg_rate,
                                                                    limits.msg_burst)
            self._http_buckets[app_id] = made
        return made[1]

    def admit(self, member: Member, limits: Limits) -> None:
        """Count a new connection, or refuse it (4029) past its app's connection, per-IP or
        channel limits. Counting happens here, before any await, so connections arriving
        together cannot all slip under a limit; `leave` uncounts."""
        app = member.key[0]
        if self._per_app[app] >= limits.max_connections_per_app:
            raise Refusal(CloseCode.RATE_LIMITED, "Too many connections for this app.")
        if member.remote and self._per_ip[member.remote] >= limits.max_connections_per_ip:
            raise Refusal(CloseCode.RATE_LIMITED, "Too many connections from your address.")
        if (not self.hub.count(member.key)
                and self._channels_per_app[app] >= limits.max_channels_per_app):
            raise Refusal(CloseCode.RATE_LIMITED, "Too many channels for this app.")
        self._live.add(member)
        self._per_app[app] += 1
        if member.remote:
            self._per_ip[member.remote] += 1

    # members ------------------------------------------------------------------------------------

    def connection_total(self) -> int:
        return len(self._live)

    def channel_total(self) -> int:
        return len(self.hub.channels())

    def next_member_id(self) -> int:
        return next(self._member_ids)

    def _member_ref(self, member: Member) -> str:
        return f"{self.id}:{member.local_id}"

    async def join(self, member: Member) -> tuple[int, list[PresenceMember]]:
        """Add a member to its channel (subscribing the node for the first); returns the count
        and the presence roster."""
        key = member.key
        first = self.hub.add_member(member)
        if first:
            self._channels_per_app[key[0]] += 1
        try:
            await self._seed(key)
            if first:
                await self.broker.subscribe(key)
                start = await self.broker.last_seq(key)
                self._history[key] = History(start, deque(maxlen=self.settings.history_size))
            count = await self.broker.add_connection(key, self._member_ref(member))
        except BaseException:
            if self.hub.remove_member(member)[1]:
                self._channel_gone(key)
                await self.broker.unsubscribe(key)
            raise
        member.on_close = self._leave_soon
        roster = await self.presence.join(key, self._member_ref(member), member.uuid, member.user)
        self._dirty_counts.add(key)
        return count, roster

    async def leave(self, member: Member) -> None:
        """The member's socket is done: forget it."""
        if member in self._live:
            self._live.discard(member)
            _decrement(self._per_app, member.key[0])
            if member.remote:
                _decrement(self._per_ip, member.remote)
        await self._leave_channel(member)

    async def _leave_channel(self, member: Member) -> None:
        """Take a member out of its channel (once; later calls do nothing); unsubscribes the
        node after the channel's last local member."""
        key = member.key
        removed, last = self.hub.remove_member(member)
        if not removed:
            return
        await self.presence.leave(key, self._member_ref(member))
        self._dirty_counts.add(key)
        try:
            await self.broker.remove_connection(key, self._member_ref(member))
        except BrokerError as error:  # the member is gone all the same; say so, don't raise
            log.warning("leave of a member of %s not counted yet: %s", key, error)
        if last:
            self._channel_gone(key)
            try:
                await self.broker.unsubscribe(key)
            except BrokerError as error:
                log.warning("unsubscribing from %s failed: %s", key, error)

    def _count_changed(self, key: ChannelKey) -> None:
        """The broker's word that the count may have changed (on another node, say): read it
        at the next interval."""
        if self.hub.count(key):
            self._dirty_counts.add(key)

    def _channel_gone(self, key: ChannelKey) -> None:
        self._history.pop(key, None)
        self.channel_messages.pop(key, None)
        _decrement(self._channels_per_app, key[0])

    def _announce(self, event: PresenceEvent) -> None:
        """A presence change anywhere in the cluster, for this node's presence members; a joiner
        gets the member list instead of its own join."""
        frame = Outgoing(member_event_frame(
            event.change.value, event.member.public(), [m.public() for m in event.members]))
        joined = event.member.uuid if event.change is PresenceChange.JOINED else None
        self.hub.send_to(event.key, frame, lambda m: _wants_presence(m) and m.uuid != joined)

    def _leave_soon(self, member: Member) -> None:
        """A member asked to close leaves its channel at once, not when its socket is done."""
        if member.close_code == CloseCode.TOO_SLOW:
            self.stats.slow_members_dropped += 1
        self._in_background(self._leave_channel(member))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` on its own, kept referenced until it is done."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def count(self, key: ChannelKey) -> int:
        return await self.broker.count_connections(key)

    async def position(self, key: ChannelKey) -> tuple[str, int]:
        """The channel's epoch and latest seq, for the welcome frame."""
        await self._seed(key)
        # The seq first: reading it may teach the broker a new epoch, which the seq belongs to.
        seq = await self.broker.last_seq(key)
        return self.broker.epoch(key), seq

    async def _last_stored(self, key: ChannelKey) -> int:
        return await self.store.last_seq(*key)

    async def _seed(self, key: ChannelKey) -> None:
        """Start the channel's seq above what the store holds (once per process and channel)."""
        if key not in self._seeded:
            await self.broker.raise_seq(key, await self.store.last_seq(*key))
            self._seeded.add(key)

    async def _push_counts(self) -> None:
        """Send changed counts to c8 members, at most once per interval per channel."""
        while True:
            await asyncio.sleep(COUNTS_INTERVAL)
            dirty, self._dirty_counts = self._dirty_counts, set()
            for key in dirty:
                try:
                    count = await self.broker.count_connections(key)
                except Exception as error:  # tried again next interval
                    if isinstance(error, BrokerError):  # an outage: no trace to read
                        log.warning("counting connections of %s failed: %s", key, error)
                    else:
                        log.exception("counting connections of %s failed", key)
                    self._dirty_counts.add(key)
                    continue
                self._tell_count(key, count)

    def _tell_count(self, key: ChannelKey, count: int) -> None:
        """Send the count to the channel's c8 members last told another, by a frame or their
        welcome (a joiner told 2 by its welcome, in a channel whose members were last sent 1,
        missed the 1 when the other member left before the next interval). A member still
        waiting for its welcome is told at the next interval: the count read now may be from
        before its join, and its welcome has the count after it."""
        frame: Outgoing | None = None
        for member in self.hub.members(key):
            if member.dialect is not Dialect.C8 or member.connections_told == count:
                continue
            if member.connections_told is None:
                self._dirty_counts.add(key)
                continue
            if frame is None:
                frame = Outgoing(connections_frame(count))
            member.connections_told = count
            member.send_nowait(frame)

    # records ------------------------------------------------------------------------------------

    async def republish(self, key: ChannelKey, original: Record) -> Record:
        """A recorded record into another channel (a replay): the same id, `created`, client id,
        username and data, stored there under that channel's next seq."""
        seq = await self._next_seq(key)
        record = replace(original, app=key[0], channel=key[1], seq=seq, persistent=True,
                         node=self.id, sender=None)
        await self.dispatch(record)
        return record

    async def stamp(
        self,
        key: ChannelKey,
        *,
        data: Any,
        client_id: str,
        username: str | None = None,
        text: str | None = None,
        binary: bytes | None = None,
        persistent: bool = False,
        sender: Member | None = None,
    ) -> Record:
        """A new record of the channel under its next seq (binary frames are never stored), for
        `dispatch` or `store_then_publish`."""
        seq = await self._next_seq(key)
        return Record(
            app=key[0], channel=key[1], seq=seq, id=record_id(seq), client_id=client_id,
            created=now_ms(), data=data, username=username, text=text, binary=binary,
            persistent=persistent and binary is None, node=self.id,
            sender=None if sender is None else sender.local_id,
        )

    async def _next_seq(self, key: ChannelKey) -> int:
        if key not in self._seeded:  # not awaited per publish: a joined member's key is seeded
            await self._seed(key)
        self.stats.published += 1
        return await self.broker.next_seq(key)

    async def dispatch(self, record: Record) -> None:
        """Publish a stamped record, committing it first when persistent; returns once the
        broker has it. Cancelling the caller changes nothing for a persistent record: it is
        stored and published all the same."""
        if record.persistent:
            outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.store_then_publish(record, partial(_settle, outcome))
            await outcome
            return
        # Keep channel order: the persistent records stamped earlier reach the broker first
        # (shielded: their batch is shared with other publishers).
        earlier = self._storing.get(record.key)
        if earlier is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(earlier)
        await self.broker.publish(record)

    def store_then_publish(self, record: Record, answer: Answer) -> None:
        """Commit a persistent record, then hand it to the broker; `answer` is called once with
        None or the error (`NotStored`: the record is neither stored nor delivered). Records
        reach the broker in the order they came here: batch after batch, each from one task."""
        commit = self.store.append_record(record)
        batch = self._batches.get(commit)
        if batch is None:
            batch = Batch([], [], asyncio.get_running_loop().create_future())
            self._batches[commit] = batch
            commit.add_done_callback(self._stored)
        batch.records.append(record)
        batch.answers.append(answer)
        self._storing[record.key] = batch.published

    def _stored(self, commit: asyncio.Future[None]) -> None:
        batch = self._batches.pop(commit)
        error = NotStored("record not stored") if commit.cancelled() else commit.exception()
        earlier, self._last_published = self._last_published, batch.published
        self._in_background(self._publish_stored(batch, earlier, error))

    async def _publish_stored(self, batch: Batch, earlier: asyncio.Future[None] | None,
                              error: BaseException | None) -> None:
        """Hand a committed batch to the broker (in one go) once the batch before it is there;
        answer each sender: every one with `error` when the commit failed, or with the broker's
        error when publishing the batch failed."""
        try:
            if earlier is not None and not earlier.done():
                await asyncio.wait([earlier])
            failure = error
            if failure is None:
                try:
                    await self.broker.publish_all(batch.records)
                except Exception as raised:  # the answers tell the senders
                    failure = raised
            for answer in batch.answers:
                _tell(answer, failure)
        finally:
            for record in batch.records:
                if self._storing.get(record.key) is batch.published:
                    del self._storing[record.key]
            batch.published.set_result(None)

    def _deliver(self, record: Record) -> None:
        key = record.key
        frames = encode_record(record)
        history = self._history.get(key)
        if history is not None:
            history.records.append((frames.seq, frames.piesocket, frames.c8))
        skip = record.sender if record.node == self.id else None
        self.channel_messages[key] += 1
        self.stats.deliveries += self.hub.fan_out(key, frames, skip)

    async def recover(
        self, key: ChannelKey, since: int, epoch: str | None
    ) -> list[RecordFrames] | None:
        """Every record after `since`, in order and without gaps, from this node's history and
        the store; None when the gap cannot be filled (other epoch, history too short) or
        `since` is beyond anything the channel numbered (its seqs, not stored, started again
        after a restart): that member would otherwise take the next records for ones it has."""
        if since > await self.broker.last_seq(key):
            return None
        stored_only = since  # records up to here are taken from the store alone
        if epoch is not None and epoch != self.broker.epoch(key):
            # An epoch the current one took over from (the broker lost the channel) resumes
            # through stored records up to the takeover: this node's history may hold either
            # epoch's records there.
            base = self.broker.takeover(key, epoch)
            if base is None or since > base:
                return None
            stored_only = base
        limit = self.settings.history_size
        history = self._history.get(key)
        if history is None:
            return None
        found = {kept[0]: RecordFrames._make(kept) for kept in history.records
                 if kept[0] > stored_only}
        for record in await self.store.read_range(key[0], key[1], since, limit + 1):
            if record.seq not in found:
                found[record.seq] = encode_record(record)
        records = [found[seq] for seq in sorted(found)]
        if len(records) > limit:
            return None
        if any(record.seq != since + 1 + index for index, record in enumerate(records)):
            return None
        # Anything up to where this node's history starts must have been found; later records
        # are in the history or still on their way to this member.
        top = records[-1].seq if records else since
        return records if top >= history.start else None

    async def search(self, key: ChannelKey, raw_query: Any) -> dict[str, Any]:
        """Validate and run a QUERY over the channel's stored records."""
        return await self.store.search_records(key[0], key[1], validate_query(raw_query))
