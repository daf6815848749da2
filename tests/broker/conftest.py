"""Fixtures for the broker contract: a real redis-server for the session, and a `cluster` of
nodes over each broker (memory: one node; redis: as many as a test asks for, sharing one unique
key prefix)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app.broker.base import Broker, Presence, PresenceEvent
from app.broker.memory import MemoryBroker
from app.broker.redis import RedisBroker
from app.errors import StoreError
from app.records import ChannelKey, Record
from tests.live import UNIT
from tests.store.conftest import postgres_cluster, postgres_url  # noqa: F401 - shared fixtures


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A `redis-server` child process on 127.0.0.1 with no persistence, in its own directory."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=UNIT)
        deadline = time.monotonic() + 10 * UNIT
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    output = self.stop()
                    raise RuntimeError(f"redis-server did not start:\n{output}")
                time.sleep(0.01)
        finally:
            client.close()

    def stop(self) -> str:
        """Stop the server; returns what it printed."""
        if self.process is None:
            return ""
        process, self.process = self.process, None
        if process.poll() is None:
            process.terminate()
        try:
            output, _ = process.communicate(timeout=10 * UNIT)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        return output.decode(errors="replace")


def require_redis_server() -> None:
    """Skip loudly without redis-server; in CI (CI=true) a missing engine is a failure."""
    if shutil.which("redis-server") is not None:
        return
    reason = ("redis-server is not installed: the Redis broker contract did NOT run "
              "(apt-get install -y redis-server, or `make system-deps`)")
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests isolate themselves by key prefix."""
    require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


GRACE = 0.3 * UNIT
"""The presence grace period of the contract's nodes, unless a test asks for another."""


class Peer:
    """One node: a started broker with its presence and, in order, the records and presence
    events its handlers were given. `stored` plays the store: the last seq of each channel; while
    `store_down`, asking it fails like a store that cannot be reached (and is counted)."""

    def __init__(self, broker: Broker, grace: float = GRACE) -> None:
        self.broker = broker
        self.records: list[Record] = []
        self.events: list[PresenceEvent] = []
        self.stored: dict[ChannelKey, int] = {}
        self.store_down = False
        self.store_failures = 0
        self.presence: Presence = broker.presence(grace, self.events.append)

    def handle(self, record: Record) -> None:
        self.records.append(record)

    async def last_stored(self, key: ChannelKey) -> int:
        if self.store_down:
            self.store_failures += 1
            raise StoreError("store unreachable")
        return self.stored.get(key, 0)

    async def start(self) -> Peer:
        await self.broker.start(self.handle, self.last_stored)
        return self

    @property
    def seqs(self) -> list[int]:
        return [record.seq for record in self.records]


class Cluster:
    """The nodes of one test over one broker kind. Memory is a single node, so `node()` always
    returns the same peer there; redis gives a new node (its own broker instance) per call."""

    def __init__(self, kind: str, url: str = "", prefix: str = "") -> None:
        self.kind = kind
        self.url = url
        self.prefix = prefix
        self.peers: list[Peer] = []

    @property
    def distinct(self) -> bool:
        """True when `node()` makes separate nodes."""
        return self.kind != "memory"

    async def node(self, grace: float = GRACE, **options: Any) -> Peer:
        """A started node with presence `grace`; `options` go to the broker (reorder_window;
        redis: heartbeat_ttl)."""
        if self.kind == "memory":
            if not self.peers:
                broker: Broker = MemoryBroker(
                    **{k: v for k, v in options.items() if k == "reorder_window"})
                self.peers.append(await Peer(broker, grace).start())
            return self.peers[0]
        peer = Peer(RedisBroker(self.url, prefix=self.prefix, **options), grace)
        self.peers.append(peer)
        return await peer.start()

    async def close(self) -> None:
        for peer in self.peers:
            await peer.broker.close()


@pytest.fixture(params=["memory", "redis"])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """Nodes over each broker; every redis test gets its own key prefix."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        made = Cluster("redis", server.url, f"c8ws-test-{secrets.token_hex(4)}:")
    else:
        made = Cluster("memory")
    yield made
    await made.close()


@pytest.fixture
async def broker(cluster: Cluster) -> Peer:
    """The first node of the cluster."""
    return await cluster.node()
