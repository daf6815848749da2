"""Connection counts on Redis: this node's members per channel, kept in a set under its heartbeat
by the `CONNECTIONS` script, and restored when its heartbeat had expired.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from app.broker.redis_engine import CONNECTIONS, Gate, Keys, channel_tag
from app.records import ChannelKey


class Connections:
    """This node's counted members, the truth it restores to Redis. Redis errors are the
    driver's own (the broker turns them into `BrokerError`)."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        self._script = client.register_script(CONNECTIONS)
        self._members: dict[ChannelKey, set[str]] = {}
        # Channels where Redis may disagree with `_members`: an add or a remove failed there.
        self._stale: set[ChannelKey] = set()
        self._gate = Gate()  # adds and removes go through together, a restore of them alone

    def __bool__(self) -> bool:
        """True while this node counts a member somewhere."""
        return bool(self._members)

    async def add(self, key: ChannelKey, member_id: str) -> int:
        async with self._gate.shared():
            members = self._members.setdefault(key, set())
            members.add(member_id)
            try:
                return await self._run("add", key, member_id)
            except BaseException:
                # Not counted (or not known to be): don't let a restore count it later either.
                members.discard(member_id)
                if not members and self._members.get(key) is members:
                    del self._members[key]
                self._stale.add(key)
                raise

    async def remove(self, key: ChannelKey, member_id: str) -> int:
        async with self._gate.shared():
            members = self._members.get(key)
            if members is not None:
                members.discard(member_id)
                if not members:
                    del self._members[key]
            try:
                return await self._run("remove", key, member_id)
            except BaseException:
                self._stale.add(key)
                raise

    async def count(self, key: ChannelKey) -> int:
        return await self._run("count", key, "")

    async def restore(self) -> None:
        """Count this node's members again, every channel in one round trip (its heartbeat had
        expired: Redis restarted, or this node stalled and was taken for dead)."""
        await self._replace(None)

    async def resync(self) -> None:
        """Set right the channels where an add or a remove failed. A failed remove would
        otherwise keep a member that left counted for as long as this node's heartbeat lives."""
        if not self._stale:
            return
        stale, self._stale = self._stale, set()
        try:
            await self._replace(stale)
        except BaseException:
            self._stale |= stale
            raise

    async def _replace(self, keys: set[ChannelKey] | None) -> None:
        """Replace what Redis holds of this node in `keys` (None: every channel it has members
        in) with what is true here, in one round trip."""
        # Alone: an add or a remove on its way could be undone by the replacement.
        async with self._gate.exclusive(), self._client.pipeline(transaction=False) as pipe:
            for key in set(self._members) if keys is None else keys:
                await self._queue(pipe, key, self._members.get(key, set()))
            await pipe.execute()

    async def forget(self, pipe: aioredis.client.Pipeline) -> None:
        """A clean exit: queue taking this node's members out of every count."""
        for key in self._members:
            await self._queue(pipe, key, set())
        self._members.clear()

    async def _run(self, op: str, key: ChannelKey, member_id: str) -> int:
        total = await self._script(keys=[self._keys.of("nodes", key)],
                                   args=self._args(op, key, member_id))
        return int(total)

    async def _queue(self, pipe: aioredis.client.Pipeline, key: ChannelKey,
                     members: set[str]) -> None:
        """Queue replacing this node's members in the channel with `members`."""
        await self._script(keys=[self._keys.of("nodes", key)],
                           args=[*self._args("restore", key, ""), *members], client=pipe)

    def _args(self, op: str, key: ChannelKey, member_id: str) -> list[str]:
        return [op, self._keys.node, member_id, f"{self._keys.prefix}members:",
                f":{channel_tag(key)}", self._keys.beats, self._keys.of("records", key)]
