"""Stored messages through a live server: search over the socket and HTTP, restarts, crashes."""

from __future__ import annotations

import asyncio
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import websockets

from tests.live import UNIT, Server, connect, recv_json, recv_kind

pytestmark = pytest.mark.asyncio

SEED_QUERY = {
    "sortField": "created", "sortOrder": "asc", "offset": 0, "limit": 10,
    "filters": [{"field": "created", "operator": ">", "value": 1678724096803},
                {"field": "data.score", "operator": ">", "value": 55}],
}


def publish(data: object, rid: str | None = None) -> str:
    return orjson.dumps({"publish": {"data": data, **({"rid": rid} if rid else {})}}).decode()


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10 * UNIT) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        assert error.headers["Content-Type"] == "application/json"
        return error.code, orjson.loads(error.read())


async def search_ws(client: websockets.ClientConnection, query: Any, rid: str = "q") -> Any:
    await client.send(orjson.dumps({"search": {"rid": rid, "query": query}}).decode())
    return await recv_kind(client, "reply")


async def test_votes_then_search_over_socket_and_http(server: Server) -> None:
    """Two voters publish persistently; a third connection and curl-style HTTP find them."""
    url = server.ws("/c8/poll1?api_key=demo&persistent=1")
    async with await connect(url) as a, await connect(url) as b, await connect(url) as c:
        for client in (a, b, c):
            await recv_kind(client, "welcome")
        votes = [(a, {"score": 80, "liked": True}), (b, {"score": 40, "liked": False}),
                 (a, {"score": 70, "liked": False}), (b, {"score": 90, "liked": True})]
        for index, (client, vote) in enumerate(votes):
            await client.send(publish(vote, rid=f"v{index}"))
            await recv_kind(client, "reply")
        reply = await search_ws(c, SEED_QUERY)
        assert reply["rid"] == "q" and reply["total"] == 3
        assert [item["data"]["score"] for item in reply["items"]] == [80, 70, 90]
        grouped = await search_ws(c, {**SEED_QUERY, "groupBy": "data.liked"}, "g")
        assert grouped == {"rid": "g", "total": 3, "groups": [{"value": True, "count": 2},
                                                              {"value": False, "count": 1}]}
    status, body = post(f"{server.http}/api/channels/poll1/search",
                        orjson.dumps({**SEED_QUERY, "groupBy": "data.liked"}),
                        {"X-Api-Key": "demo", "Content-Type": "application/json"})
    assert status == 200
    assert body == {"total": 3, "groups": [{"value": True, "count": 2},
                                           {"value": False, "count": 1}]}


async def test_search_errors_over_socket_keep_the_connection(server: Server) -> None:
    """A hostile QUERY over the socket is an invalid_query error with its rid; nothing else."""
    async with await connect(server.ws("/c8/hostile?api_key=demo&persistent=1")) as c:
        await recv_kind(c, "welcome")
        await c.send(publish({"x": 1}, "p"))
        await recv_kind(c, "reply")
        await c.send(orjson.dumps({"search": {"rid": "bad", "query": {"filters": [
            {"field": "data.x') OR 1=1 --", "operator": "=", "value": 1}]}}}).decode())
        error = await recv_kind(c, "error")
        assert error["code"] == "invalid_query" and error["rid"] == "bad"
        assert "unknown field" in error["message"]
        assert (await search_ws(c, {}))["total"] == 1


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code"),
    [
        ("/api/channels/x/search", b"{}", {}, 401, "unauthorized"),
        ("/api/channels/x/search", b"{}", {"X-Api-Key": "wrong"}, 401, "unauthorized"),
        ("/api/channels/x/search", b"{nope", {"X-Api-Key": "demo"}, 400, "invalid_json"),
        ("/api/channels/x/search", b'{"limit":0}', {"X-Api-Key": "demo"}, 400, "invalid_query"),
        ("/api/channels/x/search", b'{"x":1}', {"X-Api-Key": "demo"}, 400, "invalid_query"),
        ("/api/channels/a%2Fb/search", b"{}", {"X-Api-Key": "demo"}, 400, "invalid_request"),
    ],
)
async def test_http_search_errors_are_json(
    server: Server, path: str, body: bytes, headers: dict[str, str], status: int, code: str,
) -> None:
    """Bad HTTP searches get a 4xx with {"error":{"code","message"}}."""
    got_status, got = post(server.http + path, body, headers)
    assert got_status == status
    assert got["error"]["code"] == code and got["error"]["message"]


async def test_restart_keeps_persistent_and_drops_the_rest(
    make_server: Callable[..., Server],
) -> None:
    """After a restart, search finds every persistent message and no other; seq continues."""
    live = make_server()
    async with await connect(live.ws("/v3/restart?api_key=demo&persistent=1")) as kept, \
            await connect(live.ws("/v3/restart?api_key=demo")) as fleeting, \
            await connect(live.ws("/v3/restart?api_key=demo&notify_self=1")) as watcher:
        for number in range(20):
            await kept.send(orjson.dumps({"n": number}).decode())
            await fleeting.send(orjson.dumps({"gone": number}).decode())
        for _ in range(40):
            await recv_json(watcher)
    live.stop()
    live.start()
    async with await connect(live.ws("/c8/restart?api_key=demo&persistent=1")) as c:
        welcome = await recv_kind(c, "welcome")
        assert welcome["seq"] >= 20
        result = await search_ws(c, {"limit": 100, "sortField": "seq"})
        assert [item["data"] for item in result["items"]] == [{"n": n} for n in range(20)]
        await c.send(publish("after", "r"))
        record = (await recv_kind(c, "reply"))["record"]
        assert record["seq"] > result["items"][-1]["seq"]


async def test_kill_9_loses_nothing_a_subscriber_saw(make_server: Callable[..., Server]) -> None:
    """kill -9 while persistent messages flow: every message delivered is in the store."""
    live = make_server({"C8WS_MSG_RATE": "0"})
    seen: list[int] = []
    async with await connect(live.ws("/v3/crash?api_key=demo")) as subscriber:
        publisher = await connect(live.ws("/v3/crash?api_key=demo&persistent=1"))

        async def flood() -> None:
            number = 0
            try:
                while True:
                    await publisher.send(str(number))
                    number += 1
                    if number % 50 == 0:
                        await asyncio.sleep(0)
            except websockets.ConnectionClosed:
                pass

        async def watch() -> None:
            try:
                while True:
                    seen.append(int(await subscriber.recv()))
            except websockets.ConnectionClosed:
                pass

        tasks = [asyncio.create_task(flood()), asyncio.create_task(watch())]
        while len(seen) < 500:
            await asyncio.sleep(0.01)
        live.kill()
        await asyncio.wait_for(asyncio.gather(*tasks), 10 * UNIT)
    assert seen == list(range(len(seen)))
    live.start()
    status, body = post(f"{live.http}/api/channels/crash/search",
                        orjson.dumps({"limit": 1, "sortField": "seq", "sortOrder": "desc"}),
                        {"X-Api-Key": "demo"})
    assert status == 200
    assert body["total"] >= len(seen)
    stored_last = body["items"][0]["data"]
    assert stored_last >= seen[-1]


async def test_failed_commit_is_not_delivered_and_sender_is_told(
    make_server: Callable[..., Server],
) -> None:
    """When SQLite refuses a record, nobody receives it and the publisher gets not_stored."""
    live = make_server()
    database = live.data_dir / "c8ws.sqlite3"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON records WHEN NEW.channel_id = "
                   "(SELECT id FROM channels WHERE name = 'doomed') "
                   "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END")
    url = live.ws("/c8/doomed?api_key=demo&persistent=1")
    async with await connect(url) as a, await connect(url) as b:
        await recv_kind(a, "welcome")
        await recv_kind(b, "welcome")
        for number in (1, 2, 3):  # sent together: one batch or several, each answered once
            await a.send(publish({"x": number}, f"r{number}"))
        errors = [await recv_kind(a, "error") for _ in range(3)]
        assert [(e["code"], e["rid"]) for e in errors] == [
            ("not_stored", "r1"), ("not_stored", "r2"), ("not_stored", "r3")]
        with pytest.raises(TimeoutError):
            await recv_kind(b, "message", 0.3)
        assert (await search_ws(a, {}))["total"] == 0
