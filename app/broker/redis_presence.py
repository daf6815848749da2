"""Presence on Redis: rosters shared by every node, each node's connections kept one by one under
its heartbeat, events published by the same script that changes a roster (so they go out in the
order of the changes) on the channel's records pub/sub.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import redis.asyncio as aioredis

from app.broker.base import (
    BrokerError,
    Presence,
    PresenceChange,
    PresenceEvent,
    PresenceMember,
)
from app.broker.redis_engine import (
    DRIVER_ERRORS,
    PRESENCE,
    Gate,
    Keys,
    channel_tag,
    engine_errors,
)
from app.records import ChannelKey

log = logging.getLogger(__name__)

SWEEP_MARGIN = 0.05
"""Seconds past a grace period before this node sweeps for it (its clock is not Redis's)."""


def decode_member(fields: dict[str, Any]) -> PresenceMember:
    """A member as the presence script writes it: `{"uuid": …, "user": …}`."""
    return PresenceMember(fields["uuid"], fields["user"])


def decode_event(key: ChannelKey, fields: dict[str, Any]) -> PresenceEvent:
    """The event a presence script published, for the channel it came on."""
    return PresenceEvent(
        key, PresenceChange(fields["presence"]), decode_member(fields["member"]),
        tuple(decode_member(member) for member in fields["members"]),
    )


class RedisPresence(Presence):
    """This node's connections per channel are kept here too: they are the truth this node
    restores to Redis after a failed call, after its heartbeat expired (Redis restarted, or the
    node stalled) and on every heartbeat for channels marked dirty.

    Redis keeps each connection under its own id, so a join and a leave of the same uuid on this
    node (a page reloaded: the old socket closes as the new one joins) give the same roster in
    whichever order they reach it; a restore waits for the joins and leaves under way, and they
    for it. Grace periods end on a timer on the node where they began; if that node dies, another
    node with connections in the channel ends them on its next heartbeat sweep.
    """

    def __init__(self, client: aioredis.Redis, keys: Keys, grace: float) -> None:
        self._redis = client
        self._keys = keys
        self._grace_ms = max(0, round(grace * 1000))
        self._grace = grace
        self._script = client.register_script(PRESENCE)
        # Per channel, this node's connections: member id -> (uuid, its member JSON).
        self._here: dict[ChannelKey, dict[str, tuple[str, bytes]]] = {}
        # Joins on their way to Redis; a leave meanwhile takes its connection out of this set.
        self._joining: set[tuple[ChannelKey, str]] = set()
        self._dirty: set[ChannelKey] = set()
        self._sweeps: set[asyncio.Task[None]] = set()
        self._gate = Gate()

    async def join(self, key: ChannelKey, member_id: str, uuid: str,
                   user: str | None) -> list[PresenceMember]:
        member = orjson.dumps(PresenceMember(uuid, user).public())
        joining = (key, member_id)
        self._joining.add(joining)
        try:
            async with self._gate.shared():
                with engine_errors("join a presence roster"):
                    roster = await self._run(key, "join", member_id, uuid, member)
        except BaseException:
            self._joining.discard(joining)
            self._dirty.add(key)  # it may have counted all the same: restore what is true
            raise
        left = joining not in self._joining
        self._joining.discard(joining)
        self._here.setdefault(key, {})[member_id] = (uuid, member)
        if left:  # it left while Redis was counting it: Redis has it now, so it can go
            await self.leave(key, member_id)
        return [decode_member(fields) for fields in orjson.loads(roster)]

    async def leave(self, key: ChannelKey, member_id: str) -> None:
        joining = (key, member_id)
        if joining in self._joining:
            self._joining.discard(joining)  # the join leaves once Redis has counted it
            return
        here = self._here.get(key)
        if here is None or here.pop(member_id, None) is None:
            return
        if not here:
            del self._here[key]
        try:
            async with self._gate.shared():
                with engine_errors("leave a presence roster"):
                    released = await self._run(key, "leave", member_id, "", "")
        except BrokerError as error:
            log.warning("presence leave in %s not recorded (%s); restoring later", key, error)
            self._dirty.add(key)
            return
        except BaseException:
            self._dirty.add(key)
            raise
        if released:
            task = asyncio.create_task(self._sweep(key, self._grace + SWEEP_MARGIN),
                                       name="redis-presence-sweep")
            self._sweeps.add(task)
            task.add_done_callback(self._sweeps.discard)

    async def beat(self, expired: bool) -> None:
        """The node's heartbeat: restore every channel if the heartbeat had expired (or only the
        dirty ones), then sweep every channel with connections here, in one round trip."""
        restoring = expired or bool(self._dirty)
        async with self._gate.exclusive() if restoring else self._gate.shared():
            await self._restore_and_sweep(expired)

    async def _restore_and_sweep(self, expired: bool) -> None:
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
        return orjson.dumps([[member_id, uuid, member.decode()]
                             for member_id, (uuid, member) in self._here.get(key, {}).items()])

    async def _sweep(self, key: ChannelKey, delay: float) -> None:
        """End a grace period on time (the heartbeat's sweep is the fallback)."""
        await asyncio.sleep(delay)
        try:
            await self._run(key, "sweep", "", "", "")
        except DRIVER_ERRORS as error:
            log.warning("presence sweep of %s failed: %s", key, error)

    async def _run(self, key: ChannelKey, op: str, member_id: str, uuid: str,
                   data: str | bytes) -> Any:
        keys, args = self._call(key, op, member_id, uuid, data)
        return await self._script(keys=keys, args=args)

    async def _queue(self, pipe: aioredis.client.Pipeline, key: ChannelKey, op: str,
                     data: str | bytes) -> None:
        """Queue a whole-channel op ('restore', 'sweep') on a pipeline."""
        keys, args = self._call(key, op, "", "", data)
        await self._script(keys=keys, args=args, client=pipe)

    def _call(self, key: ChannelKey, op: str, member_id: str, uuid: str,
              data: str | bytes) -> tuple[list[str], list[Any]]:
        of, prefix = self._keys.of, self._keys.prefix
        return (
            [of("roster", key), of("users", key), of("leaving", key), of("pnodes", key)],
            [op, self._keys.node, member_id, uuid, data, self._grace_ms, f"{prefix}here:",
             f"{prefix}conns:", f":{channel_tag(key)}", self._keys.beats, of("records", key)],
        )
