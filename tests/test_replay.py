"""Replays: recorded records into a scratch channel, exactly as they were, at a chosen pace."""

from __future__ import annotations

import asyncio
import time

import jwt
import orjson
import pytest

from tests.http import Client
from tests.live import UNIT, Server, connect, recv_kind

pytestmark = pytest.mark.asyncio


async def record_conversation(server: Server, channel: str, count: int) -> list[dict[str, object]]:
    signed = jwt.encode({"sub": channel, "exp": int(time.time()) + 60, "username": "ann"},
                        server.secret, algorithm="HS256")
    url = server.ws(f"/c8/{channel}?api_key=demo&persistent=1&jwt={signed}")
    records = []
    async with await connect(url) as talker:
        await recv_kind(talker, "welcome")
        for number in range(count):
            await talker.send(orjson.dumps({"publish": {"data": {"n": number}, "rid": "r"}})
                              .decode())
            records.append((await recv_kind(talker, "reply"))["record"])
            await asyncio.sleep(0.05)
    return records


async def test_replay_at_10x_reaches_the_scratch_channel_only(server: Server) -> None:
    """Every record arrives in order with its original id, created and username, roughly 10x
    faster than recorded, and the live channel hears nothing."""
    recorded = await record_conversation(server, "live-talk", 8)
    client = Client(server.http)
    secret = {"X-Api-Secret": server.secret}
    status, replay, _ = client.request("POST", "/api/replays",
                                       {"channel": "live-talk", "speed": 10}, headers=secret)
    assert status == 201 and replay["total"] == 8 and replay["state"] == "paused"
    scratch = replay["channel"]
    assert scratch != "live-talk"
    async with await connect(server.ws(f"/c8/{scratch}?api_key=demo")) as viewer, \
            await connect(server.ws("/v3/live-talk?api_key=demo")) as live:
        await recv_kind(viewer, "welcome")
        began = time.monotonic()
        client.request("POST", f"/api/replays/{replay['id']}/play", headers=secret)
        got = [await recv_kind(viewer, "message") for _ in range(8)]
        elapsed = time.monotonic() - began
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(live.recv(), 0.3 * UNIT)
    keep = ("id", "created", "username", "data", "client_id")
    assert [{k: r[k] for k in keep} for r in got] == [{k: r[k] for k in keep} for r in recorded]
    span = (recorded[-1]["created"] - recorded[0]["created"]) / 1000  # type: ignore[operator]
    assert elapsed < span  # faster than the original pace
    _, status_body, _ = client.request("GET", f"/api/replays/{replay['id']}", headers=secret)
    assert status_body["state"] == "done" and status_body["position"] == 8


async def test_step_and_seek(server: Server) -> None:
    """Step mode publishes one record per step; seeking back starts a fresh scratch channel."""
    await record_conversation(server, "steps", 4)
    client = Client(server.http)
    secret = {"X-Api-Secret": server.secret}
    _, replay, _ = client.request("POST", "/api/replays", {"channel": "steps", "speed": "step"},
                                  headers=secret)
    async with await connect(server.ws(f"/c8/{replay['channel']}?api_key=demo")) as viewer:
        await recv_kind(viewer, "welcome")
        _, after, _ = client.request("POST", f"/api/replays/{replay['id']}/step", headers=secret)
        assert after["position"] == 1
        assert (await recv_kind(viewer, "message"))["data"] == {"n": 0}
        _, after, _ = client.request("POST", f"/api/replays/{replay['id']}/seek",
                                     {"position": 3}, headers=secret)
        assert after["position"] == 3
        assert [(await recv_kind(viewer, "message"))["data"]["n"] for _ in range(2)] == [1, 2]
    _, back, _ = client.request("POST", f"/api/replays/{replay['id']}/seek", {"position": 1},
                                headers=secret)
    assert back["channel"] != replay["channel"] and back["position"] == 1


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/api/replays", {"channel": "steps", "speed": 3}, 400),
        ("POST", "/api/replays", {"channel": "a/b"}, 400),
        ("POST", "/api/replays", {"channel": "steps", "extra": 1}, 400),
        ("POST", "/api/replays", b'{"channel": "steps", "start": 9223372036854775808}', 400),
        ("GET", "/api/replays/nope", None, 404),
        ("POST", "/api/replays/nope/play", None, 404),
    ],
)
async def test_replay_errors(server: Server, method: str, path: str, body: object,
                             status: int) -> None:
    """Bad replay requests get JSON errors; without the secret, 401."""
    client = Client(server.http)
    assert client.request(method, path, body, headers={"X-Api-Secret": server.secret})[0] == status
    assert client.request(method, path, body)[0] == 401
