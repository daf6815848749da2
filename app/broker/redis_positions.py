"""Channel positions on Redis as one node knows them: each channel's epoch, how it began, and the
highest seq this node saw, settled with Redis (the `POSITION` script) so that a position Redis
lost or rolled back never hands out a seq again.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from app.broker.base import BrokerError, LastStored
from app.broker.redis_engine import POSITION, Keys
from app.errors import StoreError
from app.records import ChannelKey

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Takeover:
    """What this node learnt of how the channel's current epoch began."""

    base: int
    prev: str


class Positions:
    """What this node learnt of each channel's position, and the calls that settle it.

    Redis errors are the driver's own (the broker turns them into `BrokerError`); the store's
    errors come from `last_stored`.
    """

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._keys = keys
        self._script = client.register_script(POSITION)
        self._client = client
        self.last_stored: LastStored | None = None  # given by the broker's `start`
        self._epochs: dict[ChannelKey, str] = {}
        self._takeovers: dict[ChannelKey, _Takeover] = {}
        self._floors: dict[ChannelKey, int] = {}  # the highest seq seen per channel
        # Channels to settle above the store's last seq too: Redis may have restarted from an
        # older copy of their positions since this node last settled them.
        self._recheck: set[ChannelKey] = set()

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

    def see(self, key: ChannelKey, seq: int) -> None:
        """A seq of the channel this node delivered or was given."""
        if self._floors.get(key, 0) < seq:
            self._floors[key] = seq

    def reconnected(self) -> None:
        """The connection to Redis was made again: Redis may have restarted, empty or from an
        older copy, so each known channel is settled against the store once more."""
        self._recheck.update(self._epochs)

    async def last_seq(self, key: ChannelKey) -> int:
        position: list[Any] = await self._client.hmget(
            self._keys.of("pos", key), ["seq", "epoch", "base", "prev"])
        if position[0] is None:
            return 0
        self._learn(key, position)
        return int(position[0])

    async def settle(self, key: ChannelKey, at_least: int, *, create: bool = False,
                     reserve: bool = False) -> int:
        """Run `POSITION` with what this node saw and `at_least`; a position Redis lost is made
        again above the store's last seq too (whose errors propagate). `create`: `at_least` is
        the store's last seq already. Returns the channel's seq afterwards."""
        if key in self._recheck:
            try:
                at_least = max(at_least, await self._stored(key))
                create = True
            except StoreError as error:
                # Settling with what this node saw beats refusing every publish while the store
                # is down as well; a missing position still waits for the store below.
                log.warning("the store cannot tell the last seq of %s (%s); settling its "
                            "position with the seqs this node saw", key, error)
            self._recheck.discard(key)
        position = await self._run(key, at_least, create, reserve)
        if position is None:
            stored = await self._stored(key)
            position = await self._run(key, max(at_least, stored), True, reserve)
            assert position is not None  # made when missing
        self._learn(key, position)
        return int(position[0])

    async def _stored(self, key: ChannelKey) -> int:
        assert self.last_stored is not None
        return await self.last_stored(key)

    async def _run(self, key: ChannelKey, at_least: int, create: bool,
                   reserve: bool) -> list[bytes] | None:
        top = max(at_least, self._floors.get(key, 0))
        result: list[bytes] | None = await self._script(
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
        self.see(key, int(seq))
