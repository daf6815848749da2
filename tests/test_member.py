"""Members with direct sockets (app/wire.py) and the flusher, over real socket pairs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from app.config import load_settings
from app.errors import CloseCode
from app.limits import TokenBucket, limits_for
from app.member import Flusher, Member, MemberState, Outgoing
from app.protocol import Dialect
from app.wire import DirectSocket

pytestmark = pytest.mark.asyncio
Pair = tuple[Member, socket.socket]
MakeMember = Callable[..., Awaitable[Pair]]


@pytest.fixture
async def make_member() -> AsyncIterator[MakeMember]:
    """Members whose direct socket is one end of a socket pair; the test reads the other."""
    loop = asyncio.get_running_loop()
    flusher = Flusher()
    made: list[tuple[asyncio.BaseTransport, socket.socket]] = []

    async def make(max_queue_bytes: int = 4 << 20) -> Pair:
        ours, theirs = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        made.append((transport, theirs))
        settings = load_settings({}, {"max_queue_bytes": max_queue_bytes})
        member = Member(
            local_id=len(made), dialect=Dialect.PIESOCKET, key=("demo", "direct"),
            client_id=f"m{len(made)}", uuid="u", user=None, username=None, notify_self=False,
            persistent=False, presence=False, origin=None, remote=None,
            limits=limits_for(settings, {}), bucket=TokenBucket(0, 1),
            socket=DirectSocket(transport), flusher=flusher)
        return member, theirs

    yield make
    for transport, theirs in made:
        transport.close()
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


async def test_frames_queued_together_are_written_together_in_order(
    make_member: MakeMember,
) -> None:
    member, peer = await make_member()
    frames = [Outgoing(f"frame {n}", n + 1) for n in range(3)] + [Outgoing(b"\x00\x01")]
    for frame in frames:
        member.send_nowait(frame)
    assert received(peer) == b""  # nothing before the loop turns
    await asyncio.sleep(0)
    assert received(peer) == b"".join(frame.wire for frame in frames)
    assert member.messages_out == 4 and member.queue_depth == 0 and member.queued_bytes == 0


async def test_after_a_slow_flush_the_next_one_waits(
    make_member: MakeMember,
) -> None:
    """Flushing 20 MB takes well over SLOW_FLUSH; a frame queued right after is not written on
    the loop's next iteration, but soon after (at most MAX_FLUSH_DELAY later)."""
    pairs = [await make_member() for _ in range(20)]
    big = Outgoing(b"x" * (1 << 20))
    for member, _ in pairs:
        member.send_nowait(big)
    await asyncio.sleep(0)
    assert all(member.messages_out == 1 for member, _ in pairs)
    member, peer = pairs[0]
    small = Outgoing("later")
    member.send_nowait(small)
    await asyncio.sleep(0)
    assert member.messages_out == 1
    await asyncio.sleep(0.05)
    assert member.messages_out == 2
    data = b""
    async with asyncio.timeout(5):
        while len(data) < big.size + small.size:
            data += received(peer)
            await asyncio.sleep(0.001)
    assert data == big.wire + small.wire


async def test_a_member_whose_socket_backs_up_past_its_limit_is_closed_too_slow(
    make_member: MakeMember,
) -> None:
    member, peer = await make_member(max_queue_bytes=256 << 10)
    for _ in range(20):
        member.send_nowait(Outgoing(b"x" * (64 << 10)))
        await asyncio.sleep(0)
    assert member.state is MemberState.CLOSING
    assert member.close_code == CloseCode.TOO_SLOW
    assert member.queue_depth == 0
    assert received(peer)  # what fitted was written before


async def test_a_member_whose_reader_caught_up_is_not_closed(
    make_member: MakeMember,
) -> None:
    """`queued_bytes` holds what the kernel had not taken at the last flush; a member that has
    read everything since gets room again instead of a 4008."""
    member, peer = await make_member(max_queue_bytes=2 << 20)
    member.send_nowait(Outgoing(b"x" * (1536 << 10)))
    await asyncio.sleep(0)
    assert member.queued_bytes > 0
    while len(received(peer)) or (member.socket is not None and member.socket.buffered()):
        await asyncio.sleep(0.01)
    member.send_nowait(Outgoing(b"y" * (1 << 20)))
    assert member.state is MemberState.OPEN
