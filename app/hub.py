"""This node's members, by channel, and the synchronous fan-out that feeds their queues.

A record is encoded at most once per dialect, and that one `Outgoing` goes into every member's
queue; nothing here awaits, so one slow member never holds up a channel.
"""

from __future__ import annotations

from collections.abc import Callable

from app.member import Flusher, Member, Outgoing
from app.protocol import Dialect, RecordFrames
from app.records import ChannelKey


class Hub:
    """Local members per channel, in join order."""

    def __init__(self) -> None:
        self._channels: dict[ChannelKey, dict[int, Member]] = {}
        self.flusher = Flusher()  # for the members' direct sockets

    def add_member(self, member: Member) -> bool:
        """Add a member; True when it is the channel's first on this node."""
        members = self._channels.setdefault(member.key, {})
        members[member.local_id] = member
        return len(members) == 1

    def remove_member(self, member: Member) -> tuple[bool, bool]:
        """Remove a member: (whether it was here, whether it was the channel's last)."""
        members = self._channels.get(member.key)
        if members is None or members.pop(member.local_id, None) is None:
            return False, False
        if not members:
            del self._channels[member.key]
            return True, True
        return True, False

    def members(self, key: ChannelKey) -> list[Member]:
        return list(self._channels.get(key, {}).values())

    def count(self, key: ChannelKey) -> int:
        """The channel's members on this node, without copying them."""
        return len(self._channels.get(key, ()))

    def channels(self) -> list[ChannelKey]:
        return list(self._channels)

    def fan_out(self, key: ChannelKey, frames: RecordFrames, skip: int | None = None) -> int:
        """Queue a record's frames for the channel's members (but `skip`, unless it asked for
        its own messages); returns how many got it."""
        members = self._channels.get(key)
        if not members:
            return 0
        sender = members.get(skip) if skip is not None else None
        if sender is not None and sender.notify_self:
            sender = None
        piesocket: Outgoing | None = None
        c8: Outgoing | None = None
        delivered = 0
        for member in members.values():
            if member is sender:
                continue
            if member.dialect is Dialect.PIESOCKET:
                if piesocket is None:
                    piesocket = Outgoing(frames.piesocket, frames.seq)
                member.send_nowait(piesocket)
            elif frames.c8 is not None:
                if c8 is None:
                    c8 = Outgoing(frames.c8, frames.seq)
                member.send_nowait(c8)
            else:
                continue
            delivered += 1
        return delivered

    def send_to(self, key: ChannelKey, item: Outgoing, wanted: Callable[[Member], bool]) -> None:
        """Queue one frame for the channel's members that `wanted` picks (e.g. connection counts
        for c8 members, member events for presence members)."""
        for member in self._channels.get(key, {}).values():
            if wanted(member):
                member.send_nowait(item)
