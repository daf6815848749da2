"""Many members joining one node on the redis broker at once: every one is welcomed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from tests.broker.conftest import RedisServer
from tests.live import Server, connect, recv_kind

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
    assert len(welcomes) == MEMBERS
    assert max(w["connections"] for w in welcomes) == MEMBERS
