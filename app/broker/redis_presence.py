"""Presence on Redis: rosters shared by every node, each node's connections counted per uuid
under its heartbeat, events published by the same script that changes a roster (so they go out
in the order of the changes) on the channel's records pub/sub.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.broker.base import (
    Presence,
    PresenceChange,
    PresenceEvent,
    PresenceMember,
)
from app.broker.redis_engine import PRESENCE, Keys, channel_tag, engine_errors
from app.records import ChannelKey

log = logging.getLogger(__name__)

SWEEP_MARGIN = 0.05
"""Seconds past a grace period before this node sweeps for it (its clock is not Redis's)."""


def decode_event(key: ChannelKey, fields: dict[str, Any]) -> PresenceEvent:
    """The event a presence script published, for the channel it came on."""
    return PresenceEvent(
        key, PresenceChange(fields["presence"]), PresenceMember(**fields["member"]),
        tuple(PresenceMember(**member) for member in fields["members"]),
    )


class RedisPresence(Presence):
    """This node's connections per channel and uuid are kept here too: they are the truth this
    node restores to Redis after a failed call, after its heartbeat expired (Redis restarted, or
    the node stalled) and on every heartbeat for channels marked dirty.

    Grace periods end on a timer on the node where they began; if that node dies, another node
    with connections in the channel ends them on its next heartbeat sweep.
    """

    def __init__(self, client: aioredis.Redis, keys: Keys, grace: float) -> None:
        self._redis = client
        self._keys = keys
        self._grace_ms = max(0, round(grace * 1000))
        self._grace = grace
        self._script = client.register_script(PRESENCE)
        # Per channel, this node's connections: member id -> (uuid, its member JSON).
        self._here: dict[ChannelKey, dict[str, tuple[str, bytes]]] = {}
        self._dirty: set[ChannelKey] = set()
        self._sweeps: set[asyncio.Task[None]] = set()

    async def join(self, key: ChannelKey, member_id: str, uuid: str,
                   user: str | None) -> list[PresenceMember]:
        here = self._here.setdefault(key, {})
        member = orjson.dumps(PresenceMember(uuid, user).public())
        count = 1 + sum(1 for other, (each, _) in here.items()
                        if each == uuid and other != member_id)
        try:
            with engine_errors("join a presence roster"):
                roster = await self._run(key, "join", uuid, count, member)
        except BaseException:
            self._dirty.add(key)  # it may have counted all the same: restore what is true
            if not here:
                del self._here[key]
            raise
        here[member_id] = (uuid, member)
        return [PresenceMember(**orjson.loads(each)) for each in roster]

    async def leave(self, key: ChannelKey, member_id: str) -> None:
        here = self._here.get(key, {})
        if member_id not in here:
            return
        uuid, _ = here.pop(member_id)
        if not here:
            del self._here[key]
        remaining = sum(1 for each, _ in here.values() if each == uuid)
        try:
            await self._run(key, "leave", uuid, remaining, "")
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("presence leave in %s not recorded (%s); restoring later", key, error)
            self._dirty.add(key)
            return
        if not remaining:
            task = asyncio.create_task(self._sweep(key, self._grace + SWEEP_MARGIN),
                                       name="redis-presence-sweep")
            self._sweeps.add(task)
            task.add_done_callback(self._sweeps.discard)

    async def beat(self, expired: bool) -> None:
        """The node's heartbeat: restore every channel if the heartbeat had expired (or only the
        dirty ones), then sweep every channel with connections here, in one round trip."""
        restore = set(self._here) | self._dirty if expired else set(self._dirty)
        self._dirty -= restore
        channels = set(self._here) | restore
        if not channels:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in restore:
                    await self._queue(pipe, key, "restore", self._restoring(key))
                for key in channels - restore:
                    await self._queue(pipe, key, "sweep", "")
                await pipe.execute()
        except BaseException:
            self._dirty |= restore
            raise

    async def forget(self, pipe: aioredis.client.Pipeline) -> None:
        """A clean exit: queue taking this node's connections out of every roster it is in."""
        for key in set(self._here) | self._dirty:
            await self._queue(pipe, key, "restore", b"[]")
        self._here.clear()
        self._dirty.clear()

    def close(self) -> None:
        """Stop the pending sweeps; other nodes' heartbeats end those grace periods."""
        for task in self._sweeps:
            task.cancel()

    def _restoring(self, key: ChannelKey) -> bytes:
        """This node's connections in the channel as the 'restore' op takes them."""
        counts: dict[str, list[Any]] = {}
        for uuid, member in self._here.get(key, {}).values():
            counts.setdefault(uuid, [uuid, 0, member.decode()])[1] += 1
        return orjson.dumps(list(counts.values()))

    async def _sweep(self, key: ChannelKey, delay: float) -> None:
        """End a grace period on time (the heartbeat's sweep is the fallback)."""
        await asyncio.sleep(delay)
        try:
            await self._run(key, "sweep", "", 0, "")
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("presence sweep of %s failed: %s", key, error)

    async def _run(self, key: ChannelKey, op: str, uuid: str, count: int,
                   data: str | bytes) -> Any:
        keys, args = self._call(key, op, uuid, count, data)
        return await self._script(keys=keys, args=args)

    async def _queue(self, pipe: aioredis.client.Pipeline, key: ChannelKey, op: str,
                     data: str | bytes) -> None:
        """Queue a whole-channel op ('restore', 'sweep') on a pipeline."""
        keys, args = self._call(key, op, "", 0, data)
        await self._script(keys=keys, args=args, client=pipe)

    def _call(self, key: ChannelKey, op: str, uuid: str, count: int,
              data: str | bytes) -> tuple[list[str], list[Any]]:
        of = self._keys.of
        return (
            [of("roster", key), of("users", key), of("leaving", key), of("pnodes", key)],
            [op, self._keys.node, uuid, count, data, self._grace_ms,
             f"{self._keys.prefix}here:", f":{channel_tag(key)}", self._keys.beats,
             of("records", key)],
        )

