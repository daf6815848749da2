"""Who is in each channel, keyed by `uuid`: a member that reconnects with the same uuid within
the grace period is neither a leave nor a join. Local to this node (the memory broker's view)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.records import ChannelKey

PresenceMember = dict[str, Any]
"""`{"uuid": …, "user": …}` as PieSocket clients expect it."""


@dataclass
class _Entry:
    member: PresenceMember
    connections: int = 0
    leaving: asyncio.TimerHandle | None = field(default=None, repr=False)


LeftCallback = Callable[[ChannelKey, PresenceMember, list[PresenceMember]], None]


class PresenceTracker:
    """Rosters per channel; `on_left` is called when a uuid's grace period ends."""

    def __init__(self, grace: float, on_left: LeftCallback) -> None:
        self.grace = grace
        self.on_left = on_left
        self._rosters: dict[ChannelKey, dict[str, _Entry]] = {}

    def roster(self, key: ChannelKey) -> list[PresenceMember]:
        return [entry.member for entry in self._rosters.get(key, {}).values()]

    def join(self, key: ChannelKey, uuid: str, user: str | None) -> PresenceMember | None:
        """Count a connection of `uuid`; returns the member when it is new to the channel."""
        roster = self._rosters.setdefault(key, {})
        entry = roster.get(uuid)
        if entry is not None:
            entry.connections += 1
            if entry.leaving is not None:  # back within the grace period
                entry.leaving.cancel()
                entry.leaving = None
            return None
        entry = roster[uuid] = _Entry({"uuid": uuid, "user": user}, connections=1)
        return entry.member

    def leave(self, key: ChannelKey, uuid: str) -> None:
        """Uncount a connection; the uuid leaves after the grace period if none is left."""
        entry = self._rosters.get(key, {}).get(uuid)
        if entry is None:
            return
        entry.connections -= 1
        if entry.connections <= 0 and entry.leaving is None:
            loop = asyncio.get_running_loop()
            entry.leaving = loop.call_later(self.grace, self._expire, key, uuid)

    def _expire(self, key: ChannelKey, uuid: str) -> None:
        roster = self._rosters.get(key, {})
        entry = roster.pop(uuid, None)
        if not roster:
            self._rosters.pop(key, None)
        if entry is not None:
            self.on_left(key, entry.member, self.roster(key))
