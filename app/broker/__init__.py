"""Choose the broker by URL scheme; the only place that names a concrete broker."""

from __future__ import annotations

from app.broker.base import Broker
from app.errors import ConfigError


def create_broker(url: str) -> Broker:
    """`memory://` (one process); other schemes are refused with a clear message."""
    if url.startswith("memory://"):
        from app.broker.memory import MemoryBroker

        return MemoryBroker()
    raise ConfigError(f"C8WS_BROKER_URL: unsupported broker {url!r}; use memory://")
