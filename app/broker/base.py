"""The Broker seam: how a record published on one node reaches every node with members in its
channel, and where channel-wide facts (positions, connection counts) are kept.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from app.records import ChannelKey, Record

RecordHandler = Callable[[Record], None]
"""The node's handler: called once per record per subscribed node, in channel order."""


class BrokerError(Exception):
    """The broker's engine is unreachable or refused an operation."""


class Broker(ABC):
    """Cross-node fan-out, channel positions and connection counts.

    Guarantees every implementation keeps:
    - Order: records of one channel reach every subscribed node's handler in `seq` order.
    - Delivery is at most once per node and only to nodes subscribed to the channel; a record
      published while no node is subscribed is dropped (durability is the Store's job).
    - `seq` is assigned in one place for the whole cluster, strictly increasing per channel.
    - The handler is called from the event loop and must not block.
    Failures of the engine raise `BrokerError`.
    """

    @abstractmethod
    async def start(self, handler: RecordHandler) -> None:
        """Connect, and call `handler` for each record of a subscribed channel from now on."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect; no handler call happens after this returns."""

    @abstractmethod
    def epoch(self, key: ChannelKey) -> str:
        """The channel's history generation; it changes when non-stored history was lost."""

    @abstractmethod
    async def raise_seq(self, key: ChannelKey, at_least: int) -> None:
        """Make sure the next `seq` of the channel is above `at_least` (the store's last one)."""

    @abstractmethod
    async def last_seq(self, key: ChannelKey) -> int:
        """The channel's latest assigned position, 0 if none."""

    @abstractmethod
    async def next_seq(self, key: ChannelKey) -> int:
        """Reserve the channel's next position."""

    @abstractmethod
    async def publish(self, record: Record) -> None:
        """Deliver `record` to the handler of every node subscribed to its channel."""

    @abstractmethod
    async def subscribe(self, key: ChannelKey) -> None:
        """Receive this channel's records on this node (the hub calls it for the first member)."""

    @abstractmethod
    async def unsubscribe(self, key: ChannelKey) -> None:
        """Stop receiving this channel's records (the hub calls it after the last member)."""

    @abstractmethod
    async def add_connection(self, key: ChannelKey, member_id: str) -> int:
        """Count a member in the channel cluster-wide; returns the new count."""

    @abstractmethod
    async def remove_connection(self, key: ChannelKey, member_id: str) -> int:
        """Stop counting a member; returns the new count."""

    @abstractmethod
    async def count_connections(self, key: ChannelKey) -> int:
        """The channel's connections across the cluster."""
