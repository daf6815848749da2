"""The Broker and Presence seams: how a record published on one node reaches every node with
members in its channel, and where channel-wide facts (positions, connection counts, who is
present) are kept.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.records import ChannelKey, Record

log = logging.getLogger(__name__)

RecordHandler = Callable[[Record], None]
"""The node's handler: called at most once per record per subscribed node, in `seq` order."""

LastStored = Callable[[ChannelKey], Awaitable[int]]
"""The store's last `seq` of a channel (0 if none): where a lost position starts again."""

CountsChanged = Callable[[ChannelKey], None]
"""The node's handler for a subscribed channel whose count may have changed."""

REORDER_WINDOW = 0.1
"""Seconds a record ahead of a missing one is held back before the missing one is given up."""

MAX_HELD = 1000
"""Records held back per channel at most; past it the missing record is given up at once (or,
while the channel's position is not known yet, the oldest record held is dropped)."""


class BrokerError(Exception):
    """The broker's engine is unreachable or refused an operation."""


class BrokerState(enum.Enum):
    """A broker's lifecycle: `start` once, `close` once; nothing restarts."""

    NEW = "new"
    STARTED = "started"
    CLOSED = "closed"

    def require(self, expected: BrokerState, action: str) -> None:
        """Raise `BrokerError` naming both states unless this is `expected`."""
        if self is not expected:
            raise BrokerError(
                f"cannot {action}: the broker is {self.value}, expected {expected.value}")


class Broker(ABC):
    """Cross-node fan-out, channel positions and connection counts.

    Guarantees every implementation keeps:
    - Order: records of one channel reach every subscribed node's handler in strictly increasing
      `seq` order. Publishers may hand records over out of order (two nodes reserve 5 and 6 and
      publish 6 first; a persistent 5 is still committing): a record ahead of a missing `seq` is
      held for the broker's reorder window (`REORDER_WINDOW` by default), and the run is
      delivered as soon as the gap fills. A `seq` still missing after the window (its publish
      failed, or its node died) is skipped, and dropped if it turns up later: a node can miss a
      record, but never sees one out of order, so every node sees the same order.
    - Delivery is at most once per node and only to nodes subscribed to the channel; a record
      published while no node is subscribed is dropped (durability is the Store's job). A node
      receives the records reserved after its `subscribe` returned (`seq` above the `last_seq`
      it reads then); earlier ones may or may not reach it.
    - `seq` is assigned in one place for the whole cluster, strictly increasing per channel.
    - Connection counts are cluster-wide; a node that dies without cleaning up stops being
      counted after a bounded time (the memory broker has one node, so it never needs to).
    - Positions survive the engine losing them (a Redis restarted without persistence) or
      rolling them back (restarted from an older snapshot): the channel starts a new epoch whose
      seqs continue above the store's last one and every seq the nodes saw, and `takeover` says
      up to where clients of the old epoch can still resume.
    - The handler is called from the event loop and must not block.
    Failures of the engine raise `BrokerError`; so do `publish` and `subscribe` before `start` or
    after `close`, while `unsubscribe` and `remove_connection` after `close` do nothing (`close`
    already forgot this node's subscriptions and connections).
    """

    @abstractmethod
    async def start(self, handler: RecordHandler, last_stored: LastStored,
                    counts_changed: CountsChanged | None = None) -> None:
        """Connect, and call `handler` for each record of a subscribed channel from now on.
        `last_stored` is asked only when the engine lost a channel's position. `counts_changed`
        is called when a subscribed channel's count may have changed: members joined or left on
        any node (this one's own changes may come back too), or a dead node's stopped counting.
        A node learns of other nodes' changes only this way."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect and forget this node's connections; no handler call happens after this
        returns. Closing twice is harmless."""

    @abstractmethod
    def epoch(self, key: ChannelKey) -> str:
        """The channel's history generation; it changes when non-stored history was lost.

        Synchronous, so it reads what this node learnt: call `raise_seq` (or `next_seq`) for the
        channel first, as the node's seeding does; before that an implementation that keeps the
        epoch in its engine raises `BrokerError`.
        """

    @abstractmethod
    def takeover(self, key: ChannelKey, epoch: str) -> int | None:
        """When the channel's current epoch replaced `epoch` after the engine lost the channel,
        the seq it started above: once the nodes that delivered records of `epoch` have settled
        with the engine again (each does as it reconnects), every such seq is at or below it, so
        a client of `epoch` that saw up to it can resume from stored records. None when the
        current epoch did not take over from `epoch` (or nothing is known of it).

        Synchronous like `epoch`: it reads what this node learnt."""

    @abstractmethod
    async def raise_seq(self, key: ChannelKey, at_least: int) -> None:
        """Make sure the next `seq` of the channel is above `at_least` (the store's last one)."""

    @abstractmethod
    async def last_seq(self, key: ChannelKey) -> int:
        """The channel's latest assigned position, 0 if none."""

    @abstractmethod
    async def next_seq(self, key: ChannelKey) -> int:
        """Reserve the channel's next position: one more than any reserved before, cluster-wide."""

    @abstractmethod
    async def publish(self, record: Record) -> None:
        """Deliver `record` to the handler of every node subscribed to its channel (in `seq`
        order, see the class docstring); returns once the engine has accepted it."""

    @abstractmethod
    async def publish_all(self, records: Sequence[Record]) -> None:
        """`publish` each of `records` (a committed batch), in order, in as few round trips to
        the engine as it allows. When it raises, any of them may have been delivered or not."""

    @abstractmethod
    async def subscribe(self, key: ChannelKey) -> None:
        """Receive this channel's records on this node (the hub calls it for the first member).
        When it returns, every record reserved from then on reaches this node's handler."""

    @abstractmethod
    async def unsubscribe(self, key: ChannelKey) -> None:
        """Stop receiving this channel's records (the hub calls it after the last member);
        records held back for ordering are dropped."""

    @abstractmethod
    async def add_connection(self, key: ChannelKey, member_id: str) -> int:
        """Count a member in the channel cluster-wide (once per `member_id`); returns the new
        count."""

    @abstractmethod
    async def remove_connection(self, key: ChannelKey, member_id: str) -> int:
        """Stop counting a member this node added (unknown ids are ignored); returns the new
        count."""

    @abstractmethod
    async def count_connections(self, key: ChannelKey) -> int:
        """The channel's connections across the live nodes of the cluster."""

    @abstractmethod
    def presence(self, grace: float, handler: PresenceHandler) -> Presence:
        """This broker's presence (one per broker): it uses the broker's engine, delivers its
        events to `handler` on every node subscribed to the channel, and closes with it."""


class PresenceChange(enum.Enum):
    """What happened to a presence member; the values are PieSocket's event names."""

    JOINED = "member_joined"
    LEFT = "member_left"


@dataclass(frozen=True, slots=True)
class PresenceMember:
    """One uuid in a channel's roster, with the user of its first connection."""

    uuid: str
    user: str | None

    def public(self) -> dict[str, Any]:
        """`{"uuid": …, "user": …}`, as PieSocket clients read it."""
        return {"uuid": self.uuid, "user": self.user}


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A member joined or left a channel; `members` is the roster right after, in join order."""

    key: ChannelKey
    change: PresenceChange
    member: PresenceMember
    members: tuple[PresenceMember, ...]


PresenceHandler = Callable[[PresenceEvent], None]
"""The node's presence handler: called on every node subscribed to the event's channel."""


class Presence(ABC):
    """Who is in each channel across the cluster, keyed by the member's uuid.

    Guarantees every implementation keeps:
    - A uuid is in a channel's roster while any node has a connection of it there, and for
      `grace` seconds after its last one closed: a reconnect within the grace period (to any
      node) is neither a leave nor a join. Rosters list uuids in the order they joined.
    - A uuid new to the roster causes one `JOINED` event, its leaving one `LEFT` event; each is
      delivered at most once to the handler of every node subscribed to the channel (the
      origin included), through the broker, and carries the roster right after the change.
    - A node that dies without cleaning up stops counting within the broker's heartbeat TTL;
      its uuids that have no other connection then leave (the memory presence has one node).
    - When the engine is unreachable `join` raises `BrokerError`, while `leave` never raises:
      this node's own connections are what it restores to the engine once it is back. Events
      due meanwhile may be lost; the next event of the channel carries the whole roster again.
    """

    @abstractmethod
    async def join(self, key: ChannelKey, member_id: str, uuid: str,
                   user: str | None) -> list[PresenceMember]:
        """Count connection `member_id` (once) as one of `uuid` in the channel; returns the
        roster, `uuid` included (a joiner's member list). A uuid new to the channel is
        announced."""

    @abstractmethod
    async def leave(self, key: ChannelKey, member_id: str) -> None:
        """Stop counting a connection this node joined (unknown ids are ignored); a uuid with no
        connection left in the cluster leaves once the grace period is over."""


class ChannelOrder:
    """One subscribed channel on one node: hands records to the handler in strictly increasing
    `seq` order, holding back those that arrive ahead of a missing one (see `Broker`).

    Every broker feeds its records through one of these, so memory and network brokers share the
    ordering rules. Until `begin` tells it where the channel stands, it only holds, dropping the
    oldest record held past `max_held`.
    """

    __slots__ = ("_deliver", "_held", "_max_held", "_next", "_ready", "_shed", "_timer",
                 "_window", "dropped")

    def __init__(self, deliver: RecordHandler, window: float = REORDER_WINDOW,
                 max_held: int = MAX_HELD) -> None:
        self._deliver = deliver
        self._window = window
        self._max_held = max_held
        self._next: int | None = None  # the seq expected next; None: take the lowest that comes
        self._ready = False
        self._held: dict[int, Record] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._shed = 0  # records dropped since the channel's position became unknown
        self.dropped = 0  # records that turned up after their seq was given up, or were shed

    def begin(self, last_seq: int | None) -> None:
        """Start delivering after `last_seq`, the channel's position when the subscription began;
        records at or below it that were held meanwhile are dropped. None: from the lowest
        record held or to come."""
        self._next = None if last_seq is None else last_seq + 1
        self._ready = True
        self._shed = 0
        if last_seq is not None:
            for seq in [seq for seq in self._held if seq <= last_seq]:
                del self._held[seq]
        self._drain()

    def resync(self) -> None:
        """The subscription was re-established (the engine restarted): deliver what is held,
        then hold again until `begin` (positions may have been reset meanwhile)."""
        self._give_up_gap()
        self._next = None
        self._ready = False

    def push(self, record: Record) -> None:
        if self._next is not None and record.seq < self._next:
            self.dropped += 1
            log.warning("record %s of %s arrived after its seq was given up; dropped",
                        record.seq, record.key)
            return
        self._held[record.seq] = record
        if self._ready:
            self._drain()
        elif len(self._held) > self._max_held:
            # Waiting on an engine or a store that is down: keep the latest records only (the
            # oldest held is the one that came first), so memory stays bounded.
            del self._held[next(iter(self._held))]
            self.dropped += 1
            self._shed += 1
            if self._shed == 1:
                log.warning("more than %d records of %s held while its position is not known; "
                            "dropping the oldest", self._max_held, record.key)

    def close(self) -> None:
        """Drop what is held; nothing is delivered any more."""
        self._ready = False
        self._held.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _drain(self) -> None:
        held = self._held
        if held:
            seq = min(held) if self._next is None else self._next
            while seq in held:
                record = held.pop(seq)
                seq += 1
                self._next = seq
                try:
                    self._deliver(record)
                except Exception:
                    log.exception("record handler failed for %s", record.key)
        if not held:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        elif len(held) > self._max_held:
            self._give_up_gap()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._window, self._give_up_gap)

    def _give_up_gap(self) -> None:
        """The missing seq did not come in time: continue from the lowest record held."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._held and self._ready:
            self._next = min(self._held)
            self._drain()
