"""The embedded broker: one process, no engine. It keeps the network broker's shape (records in,
ordered per channel, handler called per subscribed channel; presence events through a handler)
so tests on it cover the real delivery path.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.broker.base import (
    REORDER_WINDOW,
    Broker,
    BrokerState,
    ChannelOrder,
    CountsChanged,
    LastStored,
    Presence,
    PresenceChange,
    PresenceEvent,
    PresenceHandler,
    PresenceMember,
    RecordHandler,
)
from app.records import ChannelKey, Record


class MemoryBroker(Broker):
    """Positions and counts live in this process; its epoch is new at every start, and nothing
    of an earlier process is known, so no epoch is ever taken over. There is one node, so counts
    never go stale and positions are never lost."""

    def __init__(self, reorder_window: float = REORDER_WINDOW) -> None:
        self._state = BrokerState.NEW
        self._handler: RecordHandler | None = None
        self._window = reorder_window
        self._epoch = secrets.token_hex(6)
        self._seq: dict[ChannelKey, int] = {}
        self._orders: dict[ChannelKey, ChannelOrder] = {}  # the subscribed channels
        self._connections: dict[ChannelKey, set[str]] = {}
        self._presence: MemoryPresence | None = None
        self._presence_handler: PresenceHandler | None = None

    async def start(self, handler: RecordHandler, last_stored: LastStored,
                    counts_changed: CountsChanged | None = None) -> None:
        # One node: every count changes by its own members, so `counts_changed` is never due.
        self._state.require(BrokerState.NEW, "start")
        self._handler = handler
        self._state = BrokerState.STARTED

    async def close(self) -> None:
        self._state = BrokerState.CLOSED
        self._handler = None
        for order in self._orders.values():
            order.close()
        self._orders.clear()
        self._connections.clear()
        if self._presence is not None:
            self._presence.close()
        self._presence_handler = None

    def epoch(self, key: ChannelKey) -> str:
        return self._epoch

    def takeover(self, key: ChannelKey, epoch: str) -> int | None:
        return None

    async def raise_seq(self, key: ChannelKey, at_least: int) -> None:
        if self._seq.get(key, 0) < at_least:
            self._seq[key] = at_least

    async def last_seq(self, key: ChannelKey) -> int:
        return self._seq.get(key, 0)

    async def next_seq(self, key: ChannelKey) -> int:
        seq = self._seq.get(key, 0) + 1
        self._seq[key] = seq
        return seq

    async def publish(self, record: Record) -> None:
        self._state.require(BrokerState.STARTED, "publish")
        self._push(record)

    async def publish_all(self, records: Sequence[Record]) -> None:
        self._state.require(BrokerState.STARTED, "publish")
        for record in records:
            self._push(record)

    def _push(self, record: Record) -> None:
        order = self._orders.get(record.key)
        if order is not None:
            order.push(record)

    async def subscribe(self, key: ChannelKey) -> None:
        self._state.require(BrokerState.STARTED, "subscribe")
        if key not in self._orders:
            order = ChannelOrder(self._deliver, self._window)
            order.begin(self._seq.get(key, 0))
            self._orders[key] = order

    async def unsubscribe(self, key: ChannelKey) -> None:
        order = self._orders.pop(key, None)
        if order is not None:
            order.close()

    async def add_connection(self, key: ChannelKey, member_id: str) -> int:
        members = self._connections.setdefault(key, set())
        members.add(member_id)
        return len(members)

    async def remove_connection(self, key: ChannelKey, member_id: str) -> int:
        members = self._connections.get(key)
        if members is None:
            return 0
        members.discard(member_id)
        if not members:
            del self._connections[key]
            return 0
        return len(members)

    async def count_connections(self, key: ChannelKey) -> int:
        return len(self._connections.get(key, ()))

    def presence(self, grace: float, handler: PresenceHandler) -> Presence:
        self._presence = MemoryPresence(grace, self._announce)
        self._presence_handler = handler
        return self._presence

    def _announce(self, event: PresenceEvent) -> None:
        """Presence events go where records go: to the node, for subscribed channels only."""
        if self._presence_handler is not None and event.key in self._orders:
            self._presence_handler(event)

    def _deliver(self, record: Record) -> None:
        if self._handler is not None:
            self._handler(record)


@dataclass
class _Entry:
    member: PresenceMember
    connections: set[str] = field(default_factory=set)
    leaving: asyncio.TimerHandle | None = field(default=None, repr=False)


class MemoryPresence(Presence):
    """Rosters in this process: a dict per channel keeps join order, and a timer per uuid runs
    out its grace period."""

    def __init__(self, grace: float, announce: PresenceHandler) -> None:
        self._grace = grace
        self._announce = announce
        self._rosters: dict[ChannelKey, dict[str, _Entry]] = {}
        self._uuids: dict[tuple[ChannelKey, str], str] = {}  # connection: its uuid

    async def join(self, key: ChannelKey, member_id: str, uuid: str,
                   user: str | None) -> list[PresenceMember]:
        roster = self._rosters.setdefault(key, {})
        entry = roster.get(uuid)
        if entry is None:
            entry = roster[uuid] = _Entry(PresenceMember(uuid, user))
            self._send(key, PresenceChange.JOINED, entry.member)
        elif entry.leaving is not None:  # back within the grace period
            entry.leaving.cancel()
            entry.leaving = None
        entry.connections.add(member_id)
        self._uuids[key, member_id] = uuid
        return self._members(key)

    async def leave(self, key: ChannelKey, member_id: str) -> None:
        uuid = self._uuids.pop((key, member_id), None)
        entry = None if uuid is None else self._rosters.get(key, {}).get(uuid)
        if entry is None:
            return
        entry.connections.discard(member_id)
        if not entry.connections:
            loop = asyncio.get_running_loop()
            entry.leaving = loop.call_later(self._grace, self._expire, key, entry.member.uuid)

    def close(self) -> None:
        """Forget every roster; no event follows."""
        for roster in self._rosters.values():
            for entry in roster.values():
                if entry.leaving is not None:
                    entry.leaving.cancel()
        self._rosters.clear()
        self._uuids.clear()

    def _expire(self, key: ChannelKey, uuid: str) -> None:
        roster = self._rosters.get(key, {})
        entry = roster.pop(uuid, None)
        if not roster:
            self._rosters.pop(key, None)
        if entry is not None:
            self._send(key, PresenceChange.LEFT, entry.member)

    def _members(self, key: ChannelKey) -> list[PresenceMember]:
        return [entry.member for entry in self._rosters.get(key, {}).values()]

    def _send(self, key: ChannelKey, change: PresenceChange, member: PresenceMember) -> None:
        self._announce(PresenceEvent(key, change, member, tuple(self._members(key))))
