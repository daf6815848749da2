"""Members with direct sockets (app/wire.py) and the flusher, over real socket pairs."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from wsproto.connection import ConnectionState

from app.config import load_settings
from app.errors import CloseCode
from app.limits import TokenBucket, limits_for
from app.member import Flusher, Member, MemberState, Outgoing
from app.protocol import Dialect
from app.wire import TRANSPORT_BYTES, DirectSocket

pytestmark = pytest.mark.asyncio
SOCKET_BUFFER = 32 * 1024  # small and fixed, whatever the host's defaults
Pair = tuple[Member, socket.socket]
MakeMember = Callable[..., Awaitable[Pair]]


class OpenStream:
    """What DirectSocket reads of Hypercorn's WSStream: an open WebSocket."""

    closed = False

    class connection:  # an attribute of WSStream, named as there
        state = ConnectionState.OPEN


@pytest.fixture
async def make_member() -> AsyncIterator[MakeMember]:
    """Members whose direct socket is one end of a socket pair, each with its writer task; the
    test reads the other end."""
    loop = asyncio.get_running_loop()
    flusher = Flusher()
    made: list[tuple[Member, asyncio.Task[None], socket.socket]] = []

    async def ignore(*_: Any) -> None:
        pass

    async def make(max_queue_bytes: int = 4 << 20, close_grace: float = 60) -> Pair:
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        reader = asyncio.StreamReader()
        transport, protocol = await loop.connect_accepted_socket(
            lambda: asyncio.StreamReaderProtocol(reader), ours)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        settings = load_settings({}, {"max_queue_bytes": max_queue_bytes})
        member = Member(
            local_id=len(made), dialect=Dialect.PIESOCKET, key=("demo", "direct"),
            client_id=f"m{len(made)}", uuid="u", user=None, username=None, notify_self=False,
            persistent=False, presence=False, origin=None, remote=None,
            limits=limits_for(settings, {}), bucket=TokenBucket(0, 1),
            socket=DirectSocket(OpenStream(), writer, close_grace),  # type: ignore[arg-type]
            flusher=flusher)
        made.append((member, asyncio.create_task(member.run_writer(ignore, ignore)), theirs))
        return member, theirs

    yield make
    for member, task, theirs in made:
        member.mark_gone()
        task.cancel()
        theirs.close()


def received(peer: socket.socket) -> bytes:
    peer.setblocking(False)
    data = b""
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return data
        data += chunk


async def read_all(peer: socket.socket, size: int) -> bytes:
    data = b""
    async with asyncio.timeout(5):
        while len(data) < size:
            data += received(peer)
            await asyncio.sleep(0.001)
    return data


async def test_frames_queued_together_are_written_together_in_order(
    make_member: MakeMember,
) -> None:
    member, peer = await make_member()
    await asyncio.sleep(0)  # the writer task starts, with nothing queued
    frames = [Outgoing(f"frame {n}", n + 1) for n in range(3)] + [Outgoing(b"\x00\x01")]
    for frame in frames:
        member.send_nowait(frame)
    assert received(peer) == b""  # nothing before the loop turns
    await asyncio.sleep(0)
    assert received(peer) == b"".join(frame.wire for frame in frames)
    assert member.messages_out == 4 and member.queue_depth == 0 and member.queued_bytes == 0


async def test_after_a_slow_flush_the_next_one_waits(make_member: MakeMember) -> None:
    """Flushing 20 MB takes well over SLOW_FLUSH; a frame queued right after, for a member
    with room, is not written on the loop's next iteration, but soon after."""
    pairs = [await make_member() for _ in range(21)]
    await asyncio.sleep(0)
    big = Outgoing(b"x" * (1 << 20))
    for member, _ in pairs[:20]:
        member.send_nowait(big)
    await asyncio.sleep(0)
    assert all(member.messages_out == 1 for member, _ in pairs[:20])
    member, peer = pairs[20]
    small = Outgoing("later")
    member.send_nowait(small)
    await asyncio.sleep(0)
    assert member.messages_out == 0
    await asyncio.sleep(0.05)
    assert member.messages_out == 1
    assert await read_all(peer, small.size) == small.wire


async def test_a_reader_that_stops_costs_at_most_transport_bytes_then_4008(
    make_member: MakeMember,
) -> None:
    """The transport is handed frames only up to TRANSPORT_BYTES; the rest waits in the queue,
    whose limit closes the member, and dropping the queue frees it."""
    member, peer = await make_member(max_queue_bytes=512 << 10)
    assert member.socket is not None
    frame = Outgoing(b"x" * (64 << 10))
    for _ in range(40):
        member.send_nowait(frame)
        await asyncio.sleep(0)
        room = member.socket.room()
        assert room is not None and room > -frame.size
    assert member.state is MemberState.CLOSING
    assert member.close_code == CloseCode.TOO_SLOW
    assert member.queue_depth == 0 and member.queued_bytes == 0
    # the transport and the kernel (which doubles the buffer size it is given) took these
    assert 0 < member.messages_out <= (TRANSPORT_BYTES + 4 * SOCKET_BUFFER) // frame.size + 1
    assert received(peer)  # what was written before


async def test_a_reader_that_catches_up_gets_everything_in_order(
    make_member: MakeMember,
) -> None:
    """Frames left over at TRANSPORT_BYTES are written by the writer task as the socket
    drains; the member is not closed."""
    member, peer = await make_member()
    frames = [Outgoing(bytes([n]) * (64 << 10)) for n in range(48)]
    for frame in frames:
        member.send_nowait(frame)
    await asyncio.sleep(0)
    assert member.queued_bytes > 1 << 20
    expected = b"".join(frame.wire for frame in frames)
    assert await read_all(peer, len(expected)) == expected
    assert member.state is MemberState.OPEN and member.queued_bytes == 0
    assert member.messages_out == 48


async def test_a_closed_member_still_reading_its_backlog_keeps_its_connection(
    make_member: MakeMember,
) -> None:
    """Closed with 3 MiB still to send, to a peer that takes 64 KiB every 20 ms (about a
    second in all, ten close graces): the connection stays while the peer keeps taking, and
    the peer gets everything."""
    member, peer = await make_member(close_grace=0.1)
    frames = [Outgoing(bytes([n]) * (64 << 10)) for n in range(48)]
    for frame in frames:
        member.send_nowait(frame)
    await asyncio.sleep(0)
    member.close(CloseCode.OPERATOR, "bye")
    expected = b"".join(frame.wire for frame in frames)
    data = b""
    peer.setblocking(False)
    async with asyncio.timeout(10):
        while len(data) < len(expected):
            with contextlib.suppress(BlockingIOError):
                data += peer.recv(64 << 10)
            await asyncio.sleep(0.02)
    assert data == expected


async def test_a_closed_member_taking_nothing_is_cut_off(make_member: MakeMember) -> None:
    """Closed while its peer takes nothing of what waits for it, a member's connection is
    aborted once a close grace passes without progress."""
    member, _ = await make_member(close_grace=0.1)
    assert member.socket is not None
    for n in range(48):
        member.send_nowait(Outgoing(bytes([n]) * (64 << 10)))
    await asyncio.sleep(0)
    member.close(CloseCode.OPERATOR, "bye")
    await asyncio.sleep(0.05)
    assert member.socket.room() is not None  # within the grace: still there
    async with asyncio.timeout(5):
        while member.socket.room() is not None:
            await asyncio.sleep(0.05)
