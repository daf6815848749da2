"""One connection in one channel: its identity, its bounded outgoing queue and its writer task.

Fan-out only ever calls the synchronous `send_nowait`, so a slow member slows nobody else. With
a direct socket (app/wire.py) the flusher writes the queue without waiting, once per loop
iteration, and the writer task writes only what waited for the socket to drain; otherwise the
writer task is the one place that awaits the ASGI `send`. A member whose queue would pass its
byte limit is closed with 4008 and its queue dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from app.errors import CloseCode
from app.limits import Limits, TokenBucket
from app.protocol import Dialect, Frame
from app.records import ChannelKey
from app.wire import OPCODE_BINARY, OPCODE_TEXT, DirectSocket, frame_bytes

log = logging.getLogger(__name__)

SLOW_FLUSH = 0.0005  # seconds: a flush taking longer delays the next one (see Flusher)
MAX_FLUSH_DELAY = 0.005
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]
CloseSocket = Callable[[int, str], Awaitable[None]]


class Outgoing:
    """A frame ready for the socket, shared by every member it goes to: its bytes on the wire
    (app/wire.py) and, built on first use, the ASGI event for members without a direct socket.
    `seq` is the record's position when the frame carries a record, so recovery can
    de-duplicate."""

    __slots__ = ("_event", "frame", "seq", "size", "wire")

    def __init__(self, frame: Frame, seq: int = 0) -> None:
        self.frame = frame
        self.seq = seq
        if isinstance(frame, bytes):
            self.wire = frame_bytes(frame, OPCODE_BINARY)
        else:
            self.wire = frame_bytes(frame.encode(), OPCODE_TEXT)
        self.size = len(self.wire)
        self._event: dict[str, Any] | None = None

    @property
    def event(self) -> dict[str, Any]:
        if self._event is None:
            frame = self.frame
            self._event = ({"type": "websocket.send", "bytes": frame, "text": None}
                           if isinstance(frame, bytes)
                           else {"type": "websocket.send", "bytes": None, "text": frame})
        return self._event


class Flusher:
    """Writes each member's queued frames to its direct socket in one write per flush: every
    frame fanned out meanwhile (several records, counts, replies) goes together.

    A flush runs on the loop's next iteration, but after one that took long (a record for
    thousands of members) the next waits as long as that one took, at most
    `MAX_FLUSH_DELAY`: the loop spends at most about half its time flushing, and the records
    arriving meanwhile (one per Redis message, say) go out together instead of each costing a
    system call per member. Light traffic never waits."""

    __slots__ = ("_due", "_not_before")

    def __init__(self) -> None:
        self._due: list[Member] = []
        self._not_before = 0.0  # loop time before which the next flush should not run

    def add(self, member: Member) -> None:
        if not self._due:
            loop = asyncio.get_running_loop()
            if self._not_before > loop.time():
                loop.call_at(self._not_before, self._flush)
            else:
                loop.call_soon(self._flush)
        self._due.append(member)

    def _flush(self) -> None:
        due, self._due = self._due, []
        loop = asyncio.get_running_loop()
        began = loop.time()
        for member in due:
            try:
                member.flush()
            except Exception:  # one member's failure must not leave the others unflushed
                log.exception("writing to member %s of %s failed", member.client_id, member.key)
                member.close(CloseCode.INTERNAL, "internal error")
        took = loop.time() - began
        self._not_before = began + took + min(took, MAX_FLUSH_DELAY) if took > SLOW_FLUSH else 0.0


class InFlight:
    """A member's persistent publishes not answered yet. Its read loop waits here for room
    (a bound on them) or, before a search, for all of them: one waiter at most."""

    __slots__ = ("_at_most", "_waiter", "count")

    def __init__(self) -> None:
        self.count = 0
        self._at_most = 0
        self._waiter: asyncio.Future[None] | None = None

    def started(self) -> None:
        self.count += 1

    def finished(self) -> None:
        self.count -= 1
        waiter = self._waiter
        if waiter is not None and self.count <= self._at_most:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait_until(self, at_most: int) -> None:
        """Return once at most `at_most` are in flight."""
        if self.count <= at_most:
            return
        assert self._waiter is None, "one waiter at a time (the member's read loop)"
        self._at_most = at_most
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter


class MemberState(Enum):
    OPEN = "open"  # in the hub, queue accepting frames
    CLOSING = "closing"  # a close is requested; the writer sends what is queued, then closes
    CLOSED = "closed"  # the close frame is sent or the peer has gone


@dataclass(eq=False, slots=True)
class Member:
    """A connection's identity and flags, as shown by the connections view."""

    local_id: int
    dialect: Dialect
    key: ChannelKey
    client_id: str
    uuid: str
    user: str | None
    username: str | None
    notify_self: bool
    persistent: bool
    presence: bool
    origin: str | None
    remote: str | None
    limits: Limits
    bucket: TokenBucket
    connected_at: float = field(default_factory=time.time)
    messages_in: int = 0
    messages_out: int = 0
    state: MemberState = MemberState.OPEN
    close_code: int = CloseCode.GOING_AWAY
    close_reason: str = ""
    queued_bytes: int = 0
    resumed_to: int = 0  # the last seq a resume delivered; later copies are dropped
    connections_told: int | None = None  # the count a c8 member last got; None: no welcome yet
    on_close: Callable[[Member], None] | None = field(default=None, repr=False)
    # Answers the member's persistent publishes that asked for no reply: one object for all of
    # them (set while its connection is served), not one per publish waiting for its commit.
    answer_stored: Callable[[BaseException | None], None] | None = field(default=None, repr=False)
    # Set once accepted when frames can go straight to the socket (app/wire.py); then queued
    # frames are written by `flusher`.
    socket: DirectSocket | None = field(default=None, repr=False)
    flusher: Flusher | None = field(default=None, repr=False)
    _flush_due: bool = field(default=False, repr=False)
    in_flight: InFlight = field(default_factory=InFlight, repr=False)
    _queue: deque[Outgoing] = field(default_factory=deque, repr=False)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def send_nowait(self, item: Outgoing) -> None:
        """Queue a frame without waiting; an overflow closes the member with 4008. Records at or
        below `resumed_to` were already queued by a resume and are dropped."""
        if self.state is not MemberState.OPEN or 0 < item.seq <= self.resumed_to:
            return
        if self.queued_bytes + item.size > self.limits.max_queue_bytes:
            log.info("member %s of %s too slow: %d bytes queued, closing with 4008",
                     self.client_id, self.key, self.queued_bytes)
            self._queue.clear()
            self.queued_bytes = 0
            self.close(CloseCode.TOO_SLOW, "too slow: outgoing queue overflowed")
            return
        self._queue.append(item)
        self.queued_bytes += item.size
        if self.socket is None or self.flusher is None:
            self._wakeup.set()
        elif not self._flush_due:
            self._flush_due = True
            self.flusher.add(self)

    def flush(self) -> None:
        """Write queued frames to the direct socket in one go, as many as its transport takes
        before its high-water mark; if some are left, the writer task waits for the socket to
        drain and writes them. Once the WebSocket is closing nothing more is written."""
        self._flush_due = False
        queue, socket = self._queue, self.socket
        if not queue or socket is None or self.state is MemberState.CLOSED:
            return
        room = socket.room()
        if room is None:
            queue.clear()
            self.queued_bytes = 0
            return
        if self.queued_bytes <= room:
            data = queue[0].wire if len(queue) == 1 else b"".join([item.wire for item in queue])
            self.messages_out += len(queue)
            queue.clear()
            self.queued_bytes = 0
        else:
            taken: list[bytes] = []
            size = 0
            while queue and size < room:
                item = queue.popleft()
                taken.append(item.wire)
                size += item.size
            self.messages_out += len(taken)
            self.queued_bytes -= size
            data = b"".join(taken)
            self._wakeup.set()
        if data:
            socket.write(data)

    def send_frame(self, frame: Frame) -> None:
        """Queue a frame meant for this member alone (replies, errors, counts)."""
        self.send_nowait(Outgoing(frame))

    def send_first(self, frames: list[Outgoing], after_seq: int = 0) -> None:
        """Put frames ahead of everything queued, dropping queued records at or below
        `after_seq` (they are among `frames`): the welcome and recovered records, before the
        writer starts."""
        self.resumed_to = after_seq
        live = [item for item in self._queue if not item.seq or item.seq > after_seq]
        self._queue.clear()
        self._queue.extend([*frames, *live])
        self.queued_bytes = sum(item.size for item in self._queue)
        self._wakeup.set()

    def close(self, code: int, reason: str = "") -> None:
        """Ask the writer to send what is queued, then close with `code`; idempotent."""
        if self.state is not MemberState.OPEN:
            return
        self.state = MemberState.CLOSING
        self.close_code = code
        self.close_reason = reason
        self._wakeup.set()
        if self.socket is not None:
            self.socket.cut_off_when_stuck(self._queued_bytes)
        if self.on_close is not None:
            self.on_close(self)

    def attach(self, socket: DirectSocket | None) -> None:
        """Write to `socket` directly from now on (None: keep the ASGI send). A member closed
        before it was attached (by a fan-out overflow or a shutdown during its handshake) is
        watched from here as one closed after."""
        self.socket = socket
        if socket is not None and self.state is not MemberState.OPEN:
            socket.cut_off_when_stuck(self._queued_bytes)

    def _queued_bytes(self) -> int:
        return self.queued_bytes

    def mark_gone(self) -> None:
        """The peer went away: nothing more will be written."""
        self.state = MemberState.CLOSED
        self._queue.clear()
        self.queued_bytes = 0
        self._wakeup.set()

    async def run_writer(self, send: ASGISend, close_socket: CloseSocket) -> None:
        """Write queued frames in order until closed; then send the close frame. With a direct
        socket the flusher writes them, and this task only writes what is queued at the start,
        what waited for the socket to drain, and the close."""
        queue = self._queue
        while True:
            if self.socket is not None:
                self.flush()
                if queue:  # the transport is at its high-water mark
                    await self.socket.drained()
                    continue
            while queue:
                item = queue.popleft()
                self.queued_bytes -= item.size
                await send(item.event)
                self.messages_out += 1
            if self.state is not MemberState.OPEN:
                break
            self._wakeup.clear()
            await self._wakeup.wait()
        if self.state is MemberState.CLOSING:
            self.state = MemberState.CLOSED
            await close_socket(self.close_code, self.close_reason)
