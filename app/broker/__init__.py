"""Choose the broker by URL scheme; the only place that names a concrete broker."""

from __future__ import annotations

from app.broker.base import Broker
from app.errors import ConfigError


def create_broker(url: str) -> Broker:
    """`memory://` (one process) or `redis://host:port/db` (`rediss://` for TLS: many nodes);
    other schemes are refused with a clear message. The Redis driver is imported only here."""
    if url.startswith("memory://"):
        from app.broker.memory import MemoryBroker

        return MemoryBroker()
    if url.startswith(("redis://", "rediss://")):
        from app.broker.redis import RedisBroker

        try:
            return RedisBroker(url)
        except ValueError as error:
            raise ConfigError(f"C8WS_BROKER_URL: {error}") from error
    raise ConfigError(f"C8WS_BROKER_URL: unsupported broker {url!r}; use memory:// or redis://")
