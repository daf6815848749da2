"""Two c8ws processes sharing Redis and PostgreSQL behave like one server."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.broker.conftest import RedisServer
from tests.http import Client
from tests.live import (
    UNIT,
    Server,
    StalledClient,
    closed_with,
    connect,
    recv,
    recv_json,
    recv_kind,
)

pytestmark = pytest.mark.asyncio


@pytest.fixture
def nodes(redis_server: RedisServer, postgres_url: str, make_server: Callable[..., Server],
          tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    """Nodes A and B, each with its own data dir, on one Redis and one PostgreSQL database."""
    env = {"C8WS_BROKER_URL": redis_server.url, "C8WS_DATABASE_URL": postgres_url,
           "C8WS_DEMO_SECRET": "cluster-secret-0123456789"}
    yield (make_server(env, data_dir=tmp_path / "a"), make_server(env, data_dir=tmp_path / "b"))


async def status(client: ClientConnection) -> Any:
    """The channel's count as cmd_status answers it (skipping other frames)."""
    await client.send("cmd_status")
    while True:
        frame = await recv_json(client)
        if "system" in frame:
            return frame


async def test_dialects_across_nodes_in_order(nodes: tuple[Server, Server]) -> None:
    """A PieSocket client on A and a c8 client on B exchange messages both ways, in order, and
    cmd_status on either node counts both."""
    a, b = nodes
    async with await connect(a.ws("/v3/xnode?api_key=demo")) as pie, \
            await connect(b.ws("/c8/xnode?api_key=demo")) as c8:
        await recv_kind(c8, "welcome")
        for number in range(20):
            await pie.send(orjson.dumps({"n": number}).decode())
        assert [(await recv_kind(c8, "message"))["data"]["n"] for _ in range(20)] == list(
            range(20))
        for number in range(20):
            await c8.send(orjson.dumps({"publish": {"data": {"m": number}}}).decode())
        assert [orjson.loads(await recv(pie))["m"] for _ in range(20)] == list(range(20))
        assert await status(pie) == {"system": {"connection_count": 2}}
        assert await status(c8) == {"system": {"connection_count": 2}}


async def test_pipelined_persistent_and_plain_publishes_keep_order_across_nodes(
        nodes: tuple[Server, Server]) -> None:
    """A persistent c8 member on A sends 300 publishes without waiting (within its rate burst;
    many commits, each handed to Redis record by record) while a plain member on A publishes in
    between; a member on B gets every message once, in seq order, and the persistent ones in
    the order sent."""
    a, b = nodes
    url = "/c8/xorder?api_key=demo"
    async with await connect(a.ws(url + "&persistent=1")) as stored, \
            await connect(a.ws(url)) as plain, await connect(b.ws(url)) as watcher:
        for client in (stored, plain, watcher):
            await recv_kind(client, "welcome")
        for number in range(300):
            await stored.send(orjson.dumps({"publish": {"data": {"s": number}}}).decode())
            if number % 50 == 0:
                await plain.send(orjson.dumps({"publish": {"data": {"p": number}}}).decode())
        got = [await recv_kind(watcher, "message", timeout=20 * UNIT) for _ in range(306)]
    seqs = [message["seq"] for message in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 306
    assert [m["data"]["s"] for m in got if "s" in m["data"]] == list(range(300))
    assert [m["data"]["p"] for m in got if "p" in m["data"]] == list(range(0, 300, 50))


async def test_c8_counts_follow_joins_and_leaves_on_the_other_node(
        nodes: tuple[Server, Server]) -> None:
    """A c8 member on A is sent the count when members join and leave on B (it was only sent
    counts on changes on its own node)."""
    a, b = nodes
    async with await connect(a.ws("/c8/xcount?api_key=demo")) as watcher:
        assert (await recv_kind(watcher, "welcome"))["connections"] == 1
        async with await connect(b.ws("/c8/xcount?api_key=demo")) as joiner:
            assert (await recv_kind(joiner, "welcome"))["connections"] == 2
            assert await recv_kind(watcher, "connections") == 2
        assert await recv_kind(watcher, "connections") == 1


async def test_search_on_b_finds_what_a_stored(nodes: tuple[Server, Server]) -> None:
    """Persistent messages published through A are found by a search on B."""
    a, b = nodes
    async with await connect(a.ws("/v3/xstore?api_key=demo&persistent=1&notify_self=1")) as pie:
        for number in range(5):
            await pie.send(orjson.dumps({"vote": "yes" if number % 2 else "no"}).decode())
            await recv(pie)
    code, body, _ = Client(b.http).request("POST", "/api/channels/xstore/search",
                                           {"groupBy": "data.vote"}, headers={"X-Api-Key": "demo"})
    assert code == 200
    assert body == {"total": 5, "groups": [{"value": "no", "count": 3},
                                           {"value": "yes", "count": 2}]}


async def test_killed_node_stops_being_counted(nodes: tuple[Server, Server]) -> None:
    """SIGKILL node A: within the heartbeat TTL, B counts only its own members."""
    a, b = nodes
    doomed = [await connect(a.ws("/v3/xkill?api_key=demo")) for _ in range(3)]
    async with await connect(b.ws("/v3/xkill?api_key=demo")) as survivor:
        assert await status(survivor) == {"system": {"connection_count": 4}}
        a.kill()
        deadline = time.monotonic() + 20 * UNIT
        while (await status(survivor)) != {"system": {"connection_count": 1}}:
            assert time.monotonic() < deadline, "node A's members are still counted"
            await asyncio.sleep(0.2)
    for client in doomed:
        await client.close()


async def test_two_workers_serve_one_port(redis_server: RedisServer,
                                          make_server: Callable[..., Server]) -> None:
    """`--workers 2` on the redis broker: members spread over both processes meet."""
    live = make_server({"C8WS_BROKER_URL": redis_server.url, "C8WS_WORKERS": "2"})
    url = live.ws("/v3/workers?api_key=demo")
    clients = [await connect(url) for _ in range(8)]
    try:
        await clients[0].send("to everyone")
        assert [await recv(client) for client in clients[1:]] == ["to everyone"] * 7
        assert await status(clients[0]) == {"system": {"connection_count": 8}}
    finally:
        for client in clients:
            await client.close()
    # Each worker printed a sign-in link; both workers take each (it is signed with the shared
    # key). A worker takes a link once, so two sign-ins with one link were two workers.
    deadline = time.monotonic() + 10 * UNIT
    while len(links := re.findall(r"/signin\?token=(\S+)", live.log())) < 2:
        assert time.monotonic() < deadline, live.log()
        await asyncio.sleep(0.05)
    for link in links:  # new connections until the other worker has taken it too
        signed_in, deadline = 0, time.monotonic() + 20 * UNIT
        while signed_in < 2:
            assert time.monotonic() < deadline, "a worker refused a link the other printed"
            signed_in += Client(live.http).request("GET", f"/signin?token={link}")[0] == 302


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_workers_close_their_members_with_1001_when_stopped(
        redis_server: RedisServer, make_server: Callable[..., Server], sig: int) -> None:
    """SIGTERM or SIGINT to `serve --workers 2` closes the members of every worker with 1001,
    as one process does, and it exits cleanly (Hypercorn's own workers cut them off with 1011
    after the grace period, logging a trace per socket)."""
    live = make_server({"C8WS_BROKER_URL": redis_server.url, "C8WS_WORKERS": "2"})
    clients = [await connect(live.ws("/v3/leaving?api_key=demo")) for _ in range(6)]
    assert await status(clients[0]) == {"system": {"connection_count": 6}}
    stalled = StalledClient(live.port, "/v3/leaving?api_key=demo")  # keeps its worker busy
    stopped = asyncio.create_task(asyncio.to_thread(live.stop, sig))
    codes = [(await closed_with(client, 10))[0] for client in clients]
    assert codes == [1001] * 6
    # A worker still draining: a client coming back is refused at once, or closed with 1001 by
    # a worker yet to see the stop; never accepted into a backlog nobody reads (the parent's
    # copy of the socket used to keep listening, and such a client hung).
    try:
        again = await asyncio.wait_for(connect(live.ws("/v3/leaving?api_key=demo")), 2 * UNIT)
    except TimeoutError:
        pytest.fail("a client coming back hung")
    except (OSError, websockets.InvalidHandshake):
        pass
    else:
        assert (await closed_with(again, 10))[0] == 1001
    assert await stopped == 0
    stalled.close()
    assert "Traceback" not in live.log()


async def test_presence_spans_nodes_and_heals_after_a_kill(nodes: tuple[Server, Server]) -> None:
    """A presence member on A sees a member join on B and, once B is SIGKILLed, leave within
    the heartbeat TTL; A then counts only its own members."""
    a, b = nodes
    ann, bob = {"uuid": "u-ann", "user": "ann"}, {"uuid": "u-bob", "user": "bob"}
    path = "/v3/xpresence?api_key=demo&presence=1"
    async with await connect(a.ws(f"{path}&uuid=u-ann&user=ann")) as watcher:
        assert await recv_json(watcher) == {"event": "system:member_list",
                                            "data": {"members": [ann]}}
        doomed = await connect(b.ws(f"{path}&uuid=u-bob&user=bob"))
        assert await recv_json(doomed) == {"event": "system:member_list",
                                           "data": {"members": [ann, bob]}}
        assert await recv_json(watcher) == {"event": "system:member_joined",
                                            "data": {"member": bob, "members": [ann, bob]}}
        assert await status(watcher) == {"system": {"connection_count": 2}}
        b.kill()
        assert await recv_json(watcher, 20) == {"event": "system:member_left",
                                                "data": {"member": bob, "members": [ann]}}
        assert await status(watcher) == {"system": {"connection_count": 1}}
    await doomed.close()


async def test_redis_restart_loses_no_persistent_message(
    tmp_path: Path, postgres_url: str, make_server: Callable[..., Server],
) -> None:
    """Redis stops and comes back empty: publishes meanwhile are refused with `unavailable`,
    never lost silently; records flow again from A to B and from B to A; and a client on
    either node resuming with the `since` and `epoch` it had before the restart gets every
    persistent message published after it, in order."""
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis").start()
    try:
        env = {"C8WS_BROKER_URL": redis.url, "C8WS_DATABASE_URL": postgres_url,
               "C8WS_DEMO_SECRET": "cluster-secret-0123456789"}
        a = make_server(env, data_dir=tmp_path / "a")
        b = make_server(env, data_dir=tmp_path / "b")
        acked: list[dict[str, Any]] = []  # the records whose publish was acknowledged

        async def publish(client: ClientConnection, number: int) -> Any:
            await client.send(orjson.dumps({"publish": {"data": {"n": number},
                                                        "rid": f"r{number}"}}).decode())
            while True:
                frame = await recv_json(client, 10)
                if "reply" in frame:
                    acked.append(frame["reply"]["record"])
                    return frame
                if "error" in frame:
                    return frame

        async def crosses(sender: ClientConnection, watcher: ClientConnection,
                          number: int) -> None:
            """Publish from `sender` until one of its messages reaches `watcher`."""
            deadline = time.monotonic() + 20 * UNIT
            while True:
                if "reply" in await publish(sender, number):
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5 * UNIT):
                            while (await recv_kind(watcher, "message"))["data"]["n"] != number:
                                pass
                            return
                assert time.monotonic() < deadline, f"nothing from {number - 1} on arrived"
                number += 1
                await asyncio.sleep(0.1)

        url = "/c8/restart?api_key=demo"
        async with await connect(a.ws(f"{url}&persistent=1")) as writer_a, \
                await connect(b.ws(f"{url}&persistent=1")) as writer_b, \
                await connect(a.ws(url)) as watcher_a, await connect(b.ws(url)) as watcher_b:
            epoch = (await recv_kind(writer_a, "welcome"))["epoch"]
            for client in (writer_b, watcher_a, watcher_b):
                await recv_kind(client, "welcome")
            for number in range(5):
                assert "reply" in await publish(writer_a, number)
            seen = [(await recv_kind(watcher_b, "message"))["data"]["n"] for _ in range(5)]
            assert seen == [0, 1, 2, 3, 4]
            since = acked[-1]["seq"]
            redis.stop()
            refused = await publish(writer_a, 100)
            assert refused["error"]["code"] == "unavailable"
            redis.start()
            await crosses(writer_a, watcher_b, 200)
            await crosses(writer_b, watcher_a, 300)
            for number in range(400, 405):
                assert "reply" in await publish(writer_a if number % 2 else writer_b, number)

            expected = [record["id"] for record in sorted(acked, key=lambda r: r["seq"])
                        if record["seq"] > since]
            for node in (a, b):
                resume = node.ws(f"{url}&since={since}&epoch={epoch}")
                async with await connect(resume) as late:
                    await recv_kind(late, "welcome")
                    frames = []
                    while "recovered" not in (frame := await recv_json(late)):
                        frames.append(frame)
                    assert frame == {"recovered": {"ok": True, "count": len(expected)}}
                    assert [f["message"]["id"] for f in frames if "message" in f] == expected
        code, body, _ = Client(b.http).request(
            "POST", "/api/channels/restart/search", {"limit": 1000},
            headers={"X-Api-Key": "demo"})
        assert code == 200
        assert {item["id"] for item in body["items"]} == {record["id"] for record in acked}
    finally:
        redis.stop()
