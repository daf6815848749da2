"""The embedded broker: one process, no engine. It keeps the network broker's shape (records in,
ordered per channel, handler called per subscribed channel) so tests on it cover the real
delivery path.
"""

from __future__ import annotations

import secrets

from app.broker.base import REORDER_WINDOW, Broker, BrokerState, ChannelOrder, RecordHandler
from app.records import ChannelKey, Record


class MemoryBroker(Broker):
    """Positions and counts live in this process; its epoch is new at every start. There is one
    node, so counts never go stale."""

    def __init__(self, reorder_window: float = REORDER_WINDOW) -> None:
        self._state = BrokerState.NEW
        self._handler: RecordHandler | None = None
        self._window = reorder_window
        self._epoch = secrets.token_hex(6)
        self._seq: dict[ChannelKey, int] = {}
        self._orders: dict[ChannelKey, ChannelOrder] = {}  # the subscribed channels
        self._connections: dict[ChannelKey, set[str]] = {}

    async def start(self, handler: RecordHandler) -> None:
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
        self._state.require(BrokerState.STARTED, "publish")
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

    def _deliver(self, record: Record) -> None:
        if self._handler is not None:
            self._handler(record)
