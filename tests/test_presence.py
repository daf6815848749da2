"""Presence in the piesocket dialect: member lists, joins and leaves keyed by uuid."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import pytest

from tests.live import Server, StalledClient, connect, nothing_within, recv_json

pytestmark = pytest.mark.asyncio


@pytest.fixture
def presence_server(make_server: Callable[..., Server]) -> Server:
    return make_server({"C8WS_PRESENCE_GRACE": "0.5"})


def url(server: Server, uuid: str, user: str, channel: str = "lobby") -> str:
    return server.ws(f"/v3/{channel}?api_key=demo&presence=1&uuid={uuid}&user={user}")


async def test_list_join_and_leave(presence_server: Server) -> None:
    """A joiner gets the list (not its own join); others get joined/left with the roster."""
    live = presence_server
    ann = {"uuid": "u-ann", "user": "ann"}
    bob = {"uuid": "u-bob", "user": "bob"}
    async with await connect(url(live, "u-ann", "ann")) as a:
        assert await recv_json(a) == {"event": "system:member_list", "data": {"members": [ann]}}
        async with await connect(url(live, "u-bob", "bob")) as b:
            assert await recv_json(b) == {"event": "system:member_list",
                                          "data": {"members": [ann, bob]}}
            assert await recv_json(a) == {"event": "system:member_joined",
                                          "data": {"member": bob, "members": [ann, bob]}}
            assert await nothing_within(b)
        assert await recv_json(a, 3) == {"event": "system:member_left",
                                         "data": {"member": bob, "members": [ann]}}


async def test_reconnect_with_same_uuid_is_neither_leave_nor_join(presence_server: Server) -> None:
    """An SDK reconnecting with its uuid inside the grace period causes no events."""
    live = presence_server
    async with await connect(url(live, "u-ann", "ann", "grace")) as a:
        await recv_json(a)
        async with await connect(url(live, "u-bob", "bob", "grace")):
            await recv_json(a)  # bob joined
        async with await connect(url(live, "u-bob", "bob", "grace")) as again:
            assert (await recv_json(again))["data"]["members"] == [
                {"uuid": "u-ann", "user": "ann"}, {"uuid": "u-bob", "user": "bob"}]
            assert await nothing_within(a, 1.0)


async def test_dropped_socket_leaves_no_ghost(presence_server: Server) -> None:
    """A member whose socket dies without a close frame is gone after the grace period."""
    live = presence_server
    async with await connect(url(live, "u-ann", "ann", "ghosts")) as a:
        await recv_json(a)
        ghost = StalledClient(live.port, "/v3/ghosts?api_key=demo&presence=1&uuid=u-gh&user=gh")
        assert (await recv_json(a))["event"] == "system:member_joined"
        ghost.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ghost.close()  # RST, no close frame
        left = await recv_json(a, 5)
        assert left["event"] == "system:member_left" and left["data"]["member"]["uuid"] == "u-gh"
        await a.send("cmd_status")
        assert await recv_json(a) == {"system": {"connection_count": 1}}


async def test_silent_peer_is_dropped_by_pings(make_server: Callable[..., Server]) -> None:
    """With C8WS_PING_INTERVAL set, a peer that never answers pings (no FIN, no close frame)
    is dropped after three intervals, and leaves the roster."""
    live = make_server({"C8WS_PING_INTERVAL": "0.5", "C8WS_PRESENCE_GRACE": "0.2"})
    async with await connect(url(live, "u-ann", "ann", "pings")) as a:
        await recv_json(a)
        silent = StalledClient(live.port, "/v3/pings?api_key=demo&presence=1&uuid=u-si&user=si")
        assert (await recv_json(a))["event"] == "system:member_joined"
        left = await recv_json(a, 10)
        assert left["event"] == "system:member_left" and left["data"]["member"]["uuid"] == "u-si"
        silent.close()
