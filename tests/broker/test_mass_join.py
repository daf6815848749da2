"""Joining a node on the redis broker: a burst of joins, and joins while Redis is down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from tests.broker.conftest import RedisServer
from tests.live import Server, connect, recv, recv_kind

pytestmark = pytest.mark.asyncio
MEMBERS = 400  # more than redis-py's default pool of 100 connections


async def test_hundreds_joining_at_once_are_all_welcomed(
        redis_server: RedisServer, make_server: Callable[..., Server]) -> None:
    """Joins and counts take Redis round trips; a burst of them waits for a pooled connection
    instead of failing (which used to refuse members, or answer their handshake with a 500)."""
    server = make_server({"C8WS_BROKER_URL": redis_server.url})
    url = server.ws("/c8/crowd?api_key=demo")
    async with contextlib.AsyncExitStack() as stack:
        clients = await asyncio.gather(*(connect(url) for _ in range(MEMBERS)))
        for client in clients:
            stack.push_async_callback(client.close)
        welcomes = await asyncio.gather(*(recv_kind(c, "welcome", 30) for c in clients))
    assert max(w["connections"] for w in welcomes) == MEMBERS


async def test_joining_while_redis_is_down_is_refused_with_try_again_later(
        make_server: Callable[..., Server], tmp_path: Path) -> None:
    """Without its broker a node cannot count or subscribe a member: the client gets a fatal
    frame and close 1013, and is welcomed once Redis is back."""
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis").start()
    try:
        server = make_server({"C8WS_BROKER_URL": redis.url})
        url = server.ws("/c8/outage?api_key=demo")
        redis.stop()
        async with await connect(url) as client:
            assert "broker" in orjson.loads(await recv(client, 30))["error"]
            with pytest.raises(ConnectionClosed) as closed:
                await recv(client, 30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        redis.start()
        assert (await welcome_once_redis_is_back(url))["connections"] == 1
    finally:
        redis.stop()


async def test_leaving_while_redis_is_down_is_no_error(
        make_server: Callable[..., Server], tmp_path: Path) -> None:
    """A member that leaves while Redis is down is gone all the same: the node logs a warning
    (no exception escapes the connection, which on a refused join was an HTTP 500), and it
    welcomes members again once Redis is back."""
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis").start()
    try:
        server = make_server({"C8WS_BROKER_URL": redis.url})
        url = server.ws("/c8/leaving?api_key=demo")
        client = await connect(url)
        await recv_kind(client, "welcome", 30)
        redis.stop()
        await client.close()
        for _ in range(100):
            if "not counted" in server.log():
                break
            await asyncio.sleep(0.05)
        log = server.log()
        assert "leave of a member of ('demo', 'leaving') not counted yet" in log
        assert "Exception on websocket" not in log and "Traceback" not in log
        redis.start()
        await welcome_once_redis_is_back(url)
    finally:
        redis.stop()


async def welcome_once_redis_is_back(url: str) -> dict[str, object]:
    """The welcome of a connection to `url`, trying again while the node reconnects to Redis
    by itself (until then, joins are refused with 1013)."""
    for _ in range(100):
        try:
            async with await connect(url) as client:
                welcome: dict[str, object] = await recv_kind(client, "welcome", 30)
                return welcome
        except ConnectionClosed:
            await asyncio.sleep(0.1)
    pytest.fail("never welcomed after Redis came back")
