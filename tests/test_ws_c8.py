"""The c8 dialect against a live server: welcome, publish, replies, counts, bridging, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import pytest

from app.node import COUNTS_INTERVAL
from tests.live import (
    UNIT,
    Server,
    connect,
    nothing_within,
    recv,
    recv_json,
    recv_kind,
)

pytestmark = pytest.mark.asyncio


def publish(data: object, rid: str | None = None) -> str:
    body: dict[str, object] = {"data": data}
    if rid is not None:
        body["rid"] = rid
    return orjson.dumps({"publish": body}).decode()


async def test_welcome_is_the_first_frame(server: Server) -> None:
    """The welcome names the client id, channel, epoch, latest seq and the count with us in it."""
    async with await connect(server.ws("/c8/welcome?api_key=demo&client_id=w-1")) as client:
        welcome = (await recv_json(client))["welcome"]
    assert welcome["client_id"] == "w-1"
    assert welcome["channel"] == "welcome"
    assert welcome["connections"] == 1
    assert isinstance(welcome["epoch"], str) and isinstance(welcome["seq"], int)


async def test_publish_reply_and_message_records(server: Server) -> None:
    """A publish with rid gets the stored record back; others get it as a message."""
    url = server.ws("/c8/records?api_key=demo")
    async with await connect(url + "&client_id=alice") as a, await connect(url) as b:
        await recv_kind(a, "welcome")
        await recv_kind(b, "welcome")
        await a.send(publish({"vote": "yes"}, rid="r1"))
        reply = await recv_kind(a, "reply")
        record = reply["record"]
        assert reply["rid"] == "r1"
        assert set(record) == {"id", "client_id", "created", "data", "username", "seq"}
        assert record["client_id"] == "alice" and record["data"] == {"vote": "yes"}
        assert record["username"] is None
        assert await recv_kind(b, "message") == record


async def test_notify_self_applies_to_c8(server: Server) -> None:
    """With notify_self=1 the publisher gets its own message frame too."""
    async with await connect(server.ws("/c8/c8self?api_key=demo&notify_self=1")) as a:
        await recv_kind(a, "welcome")
        await a.send(publish("hi"))
        assert (await recv_kind(a, "message"))["data"] == "hi"


async def test_errors_are_non_fatal_and_carry_rid(server: Server) -> None:
    """Malformed frames get error frames (with rid when known); the connection keeps working."""
    url = server.ws("/c8/errors?api_key=demo")
    async with await connect(url) as a, await connect(url) as b:
        await recv_kind(a, "welcome")
        await recv_kind(b, "welcome")
        cases = ["{oops", '"string"', '{"shout":{}}', '{"publish":{"rid":"r7"}}',
                 '{"search":{"rid":"s1","query":[]}}', b"\x00"]
        codes = []
        for frame in cases:
            await a.send(frame)
            codes.append(await recv_kind(a, "error"))
        assert [c["code"] for c in codes] == ["invalid_json", "invalid_json", "unknown_command",
                                              "invalid_json", "invalid_query", "invalid_json"]
        assert codes[3]["rid"] == "r7" and codes[4]["rid"] == "s1"
        await a.send(publish("still alive"))
        assert (await recv_kind(b, "message"))["data"] == "still alive"


async def test_data_nested_too_deep_is_refused_with_its_rid(server: Server) -> None:
    """A publish whose frame nests past 128 levels is invalid_json (its rid kept); the data at
    the limit (the frame wraps it in two objects) is published. A frame nested past the 1,024
    levels orjson parses is refused the same (without a rid: it cannot be read)."""
    url = server.ws("/c8/deepc8?api_key=demo&persistent=1")
    async with await connect(url) as a, await connect(url) as b:
        await recv_kind(a, "welcome")
        await recv_kind(b, "welcome")
        await a.send('{"publish":{"rid":"d1","data":' + "[" * 127 + "]" * 127 + "}}")
        error = await recv_kind(a, "error")
        assert error == {"code": "invalid_json", "rid": "d1",
                         "message": "JSON nested more than 128 levels deep"}
        await a.send('{"publish":{"rid":"d3","data":' + "[" * 1025 + "]" * 1025 + "}}")
        error = await recv_kind(a, "error")
        assert error == {"code": "invalid_json", "message": "JSON nested more than 128 levels deep"}
        at_limit: object = []
        for _ in range(125):
            at_limit = [at_limit]
        await a.send(publish(at_limit, rid="d2"))
        assert (await recv_kind(a, "reply"))["record"]["data"] == at_limit
        assert (await recv_kind(b, "message"))["data"] == at_limit


async def test_commands_work_on_c8(server: Server) -> None:
    """The raw cmd_ping/cmd_status text frames are answered as in the piesocket dialect."""
    async with await connect(server.ws("/c8/c8cmd?api_key=demo")) as a:
        await recv_kind(a, "welcome")
        await a.send("cmd_ping")
        assert await recv(a) == '{"system":"pong"}'
        await a.send("cmd_status")
        assert await recv(a) == '{"system":{"connection_count":1}}'


async def test_bridging_both_ways(server: Server) -> None:
    """piesocket text becomes a record's data; c8 data reaches piesocket as text."""
    async with await connect(server.ws("/v3/bridge?api_key=demo")) as pie, \
            await connect(server.ws("/c8/bridge?api_key=demo")) as c8:
        await recv_kind(c8, "welcome")
        await pie.send('{"event":"move","x":3}')
        assert (await recv_kind(c8, "message"))["data"] == {"event": "move", "x": 3}
        await pie.send("not json")
        assert (await recv_kind(c8, "message"))["data"] == "not json"
        await c8.send(publish({"score": 5}))
        assert await recv(pie) == '{"score":5}'
        await c8.send(publish("plain text"))
        assert await recv(pie) == "plain text"


async def test_connection_counts_are_pushed_and_coalesced(server: Server) -> None:
    """Joins and leaves reach c8 members as `connections` frames, the last value always."""
    url = server.ws("/c8/counts?api_key=demo")
    async with await connect(url) as watcher:
        await recv_kind(watcher, "welcome")
        others = [await connect(url) for _ in range(5)]
        counts = []
        while not counts or counts[-1] != 6:
            counts.append(await recv_kind(watcher, "connections"))
        assert len(counts) <= 3  # five joins, coalesced
        for other in others:
            await other.close()
        while counts[-1] != 1:
            counts.append(await recv_kind(watcher, "connections"))


async def test_a_joiner_hears_of_a_leave_within_the_same_interval(server: Server) -> None:
    """B joins (its welcome says 2) and A leaves before the next count frame is due: B is sent
    1. Counts were kept per channel as last sent in a frame, and A had been sent 1, so B was
    sent nothing and showed 2 until the next change (seen in the playground's chat test)."""
    url = server.ws("/c8/joinleave?api_key=demo")
    async with await connect(url) as a:
        assert (await recv_kind(a, "welcome"))["connections"] == 1
        await asyncio.sleep(COUNTS_INTERVAL * 2)  # the count interval after A's join has passed
        async with await connect(url) as b:
            assert (await recv_kind(b, "welcome"))["connections"] == 2
            await a.close()  # most often before the next interval (when the old code failed)
            assert await recv_kind(b, "connections") == 1


async def test_a_welcome_is_not_followed_by_the_same_count(server: Server) -> None:
    """A lone joiner's welcome says 1, and no `connections` frame repeats it."""
    async with await connect(server.ws("/c8/lonejoin?api_key=demo")) as a:
        assert (await recv_kind(a, "welcome"))["connections"] == 1
        assert await nothing_within(a, COUNTS_INTERVAL * 4)


async def test_mass_join_does_not_flood(server: Server) -> None:
    """500 members joining at once cause a handful of count frames each, not 500."""
    url = server.ws("/c8/mass?api_key=demo")
    clients = await asyncio.gather(*(connect(url) for _ in range(500)))
    try:
        await asyncio.sleep(1.5 * UNIT)
        frames = 0
        last = None
        for client in clients[:20]:
            while not await nothing_within(client, 0.05):
                frames += 1
            last = await client.send("cmd_status")
            last = await recv_json(client)
        assert last == {"system": {"connection_count": 500}}
        assert frames <= 20 * 12, f"{frames} frames for 20 members"
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def test_search_sees_the_members_own_publishes_sent_before_it(
        make_server: Callable[..., Server]) -> None:
    """Persistent publishes are stored in the background, but a search sent after them on the
    same connection waits for them: a poll widget finds the vote it just cast (commits wait
    200 ms here, so a search that did not wait would always run first)."""
    server = make_server({"C8WS_COMMIT_INTERVAL_MS": "200"})
    async with await connect(server.ws("/c8/own-votes?api_key=demo&persistent=1")) as client:
        await recv_kind(client, "welcome")
        for number in range(20):
            await client.send(publish({"n": number}))
        await client.send(orjson.dumps({"search": {"rid": "s", "query": {"limit": 1}}}).decode())
        reply = await recv_kind(client, "reply")
    assert reply["rid"] == "s" and reply["total"] == 20


async def test_pipelined_persistent_publishes_past_the_bound_are_answered_in_order(
        make_server: Callable[..., Server]) -> None:
    """A member may send more persistent publishes than the server keeps in flight for it
    (MAX_PIPELINED, 256): its reading pauses for room instead of failing, every publish is
    answered in the order sent, stored, and delivered in that order (commits wait 200 ms here,
    so the bound is reached)."""
    total = 300
    server = make_server({"C8WS_COMMIT_INTERVAL_MS": "200", "C8WS_MSG_BURST": "1000"})
    url = server.ws("/c8/pipelined?api_key=demo&persistent=1")
    async with await connect(url) as sender, await connect(url) as watcher:
        await recv_kind(sender, "welcome")
        await recv_kind(watcher, "welcome")
        for number in range(total):
            await sender.send(publish({"n": number}, rid=f"r{number}"))
        replies = [await recv_kind(sender, "reply") for _ in range(total)]
        delivered = [(await recv_kind(watcher, "message"))["data"]["n"] for _ in range(total)]
        await watcher.send(orjson.dumps({"search": {"rid": "s", "query": {"limit": 1}}}).decode())
        found = await recv_kind(watcher, "reply")
    assert [reply["rid"] for reply in replies] == [f"r{number}" for number in range(total)]
    seqs = [reply["record"]["seq"] for reply in replies]
    assert seqs == sorted(seqs) and len(set(seqs)) == total
    assert delivered == list(range(total))
    assert found["total"] == total
