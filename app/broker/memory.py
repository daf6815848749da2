"""The embedded broker: one process, no engine. It keeps the network broker's shape (records in,
handler called per subscribed channel) so tests on it cover the real delivery path.
"""

from __future__ import annotations

import secrets

from app.broker.base import Broker, BrokerError, RecordHandler
from app.records import ChannelKey, Record


class MemoryBroker(Broker):
    """Positions and counts live in this process; its epoch is new at every start."""

    def __init__(self) -> None:
        self._handler: RecordHandler | None = None
        self._epoch = secrets.token_hex(6)
        self._seq: dict[ChannelKey, int] = {}
        self._subscribed: set[ChannelKey] = set()
        self._connections: dict[ChannelKey, set[str]] = {}

    async def start(self, handler: RecordHandler) -> None:
        self._handler = handler

    async def close(self) -> None:
        self._handler = None

    def epoch(self, key: ChannelKey) -> str:
        return self._epoch

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
        if self._handler is None:
            raise BrokerError("broker is not started")
        if record.key in self._subscribed:
            self._handler(record)

    async def subscribe(self, key: ChannelKey) -> None:
        self._subscribed.add(key)

    async def unsubscribe(self, key: ChannelKey) -> None:
        self._subscribed.discard(key)

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
