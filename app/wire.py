"""The data plane: WebSocket frames encoded once and written straight to a connection's socket.

Through ASGI, every frame to every member costs an `await send(event)` that Hypercorn turns into
three event objects, a wsproto serialisation and a `send()` system call of its own. For the
members of `/v3` and `/c8` the hub instead queues frames whose bytes on the wire are built once
per record (a server's frames are not masked, so every member gets the same bytes), and each
member's queue goes to its socket in one write per loop iteration (`Flusher`).

Only the data frames take this path. The handshake, pings, pongs and the close stay with
Hypercorn, on the same socket: each write is a whole frame, so the two never interleave inside a
frame, and a member's close is sent after everything it was written. Frames go uncompressed even
when the client negotiated permessage-deflate (browsers always offer it and Hypercorn always
accepts): RFC 7692 lets a sender leave any message uncompressed (RSV1 clear), and compressing
costs a compressor per member per frame, what a fan-out cannot afford (Node's `ws` and
socket.io servers do not compress by default either). A connection on which the direct path
cannot be used (a server other than Hypercorn's asyncio one, or HTTP/2) keeps the ASGI `send`.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream
from wsproto.connection import ConnectionState

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
_FIN = 0x80
# What a member's transport may hold before its frames wait in the member's queue. Well above
# the transport's own mark (asyncio's 64 KiB): a reader that lags for a moment (a load generator
# reading 1,000 sockets) would otherwise cost its writer task a wake-up per 48 KiB drained;
# with 64 KiB, Redis fan-out to 1,000 members fell from 630k to 145k deliveries/s.
TRANSPORT_BYTES = 1 << 20
DRAIN_POLL = 0.005  # seconds


def frame_bytes(payload: bytes, opcode: int) -> bytes:
    """One unfragmented, unmasked WebSocket frame (RFC 6455, section 5.2)."""
    length = len(payload)
    if length < 126:
        return bytes((_FIN | opcode, length)) + payload
    if length < 1 << 16:
        return struct.pack("!BBH", _FIN | opcode, 126, length) + payload
    return struct.pack("!BBQ", _FIN | opcode, 127, length) + payload


class DirectSocket:
    """A WebSocket connection's socket, for whole frames built by `frame_bytes`, beside
    Hypercorn's own writes to it. The transport is given frames up to TRANSPORT_BYTES; what does
    not fit waits in the member's queue (where the member's byte limit counts it), so a reader
    that stops costs at most that much here beyond its queue."""

    __slots__ = ("_close_grace", "_high_water", "_stream", "_transport", "_writer")

    def __init__(self, stream: WSStream, writer: asyncio.StreamWriter,
                 close_grace: float) -> None:
        self._stream = stream
        self._writer = writer
        self._transport = writer.transport
        self._high_water = max(TRANSPORT_BYTES, self._transport.get_write_buffer_limits()[1])
        self._close_grace = close_grace

    def room(self) -> int | None:
        """Bytes the transport takes before it holds TRANSPORT_BYTES (at most 0: wait for
        `drained`). None once the WebSocket is closing on either side: Hypercorn may have sent
        or answered a close (a message over its size limit, the peer's close) before the app
        hears of it, and nothing may follow a close frame (RFC 6455, section 5.5.1)."""
        stream, transport = self._stream, self._transport
        if (stream.closed or stream.connection.state is not ConnectionState.OPEN
                or transport.is_closing()):
            return None
        return self._high_water - transport.get_write_buffer_size()

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    def cut_off_when_stuck(self, queued: Callable[[], int]) -> None:
        """The server is closing the WebSocket: abort the connection once a whole `close_grace`
        passes in which the peer took nothing of what waits for it (`queued()` bytes in the
        member's queue, and the transport's buffer), or in which it had everything, the close
        frame included, and did not hang up. A peer that reads nothing never gets to the close
        frame, and one that never answers it keeps Hypercorn from hanging up: either would
        otherwise hold its socket, and what is buffered for it, for good. A slow reader still
        working through a backlog keeps its connection."""
        self._watch(queued, None)

    def _watch(self, queued: Callable[[], int], before: int | None) -> None:
        transport = self._transport
        if transport.is_closing():  # hung up (or was aborted): nothing to watch
            return
        waiting = queued() + transport.get_write_buffer_size()
        if before is not None and waiting >= before:
            transport.abort()
            return
        asyncio.get_running_loop().call_later(self._close_grace, self._watch, queued, waiting)

    async def drained(self) -> None:
        """Wait until the transport has room again, or the connection is lost. Past
        TRANSPORT_BYTES it is past its own high-water mark too, so `drain` waits for it to
        write down to its low-water mark."""
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()
        room = self.room()
        if room is not None and room <= 0:  # a transport whose own marks are set higher
            await asyncio.sleep(DRAIN_POLL)


def direct_socket(send: Callable[[Any], Awaitable[None]],
                  close_grace: float) -> DirectSocket | None:
    """The socket behind an accepted WebSocket's ASGI `send`, when frames may be written to it
    directly: Hypercorn's asyncio server speaking HTTP/1.1. None otherwise (the caller keeps
    `send`). This reads Hypercorn's objects, not an ASGI interface; tests/test_wire.py checks
    that it finds the socket with the Hypercorn version installed."""
    stream = getattr(send, "__self__", None)
    protocol = getattr(getattr(stream, "send", None), "__self__", None)
    server = getattr(getattr(protocol, "send", None), "__self__", None)
    if not (isinstance(stream, WSStream) and isinstance(protocol, H11Protocol)
            and isinstance(server, TCPServer)):
        return None
    return DirectSocket(stream, server.writer, close_grace)
