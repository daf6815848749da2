"""Secret-protected HTTP: live channels, members, disconnect, export/import, REST publish,
metrics."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.http import Client
from tests.live import Server, closed_with, connect, recv, recv_kind

pytestmark = pytest.mark.asyncio
SECRET_ROUTES = ["/api/channels", "/api/channels/x/connections", "/api/channels/x/export"]


@pytest.mark.parametrize("path", SECRET_ROUTES)
async def test_secret_routes_refuse_without_the_secret(server: Server, path: str) -> None:
    """Missing or wrong secrets get 401 with a JSON error and no data."""
    client = Client(server.http)
    for headers in ({}, {"X-Api-Secret": "wrong"}, {"X-Api-Key": "demo"}):
        status, body, _ = client.request("GET", path, headers=headers)
        assert status == 401
        assert set(body) == {"error"} and body["error"]["code"] == "unauthorized"


async def test_channels_connections_and_operator_disconnect(server: Server) -> None:
    """Live channels list their counts and members; an operator can close a member (4000)."""
    client = Client(server.http)
    secret = {"X-Api-Secret": server.secret}
    url = server.ws("/c8/watched?api_key=demo&persistent=1&client_id=victim")
    async with await connect(url) as victim, \
            await connect(server.ws("/v3/watched?api_key=demo&presence=1&user=pat")) as other:
        await recv_kind(victim, "welcome")
        _, listed, _ = client.request("GET", "/api/channels", headers=secret)
        assert {"channel": "watched", "connections": 2, "members_here": 2} in listed["channels"]
        _, detail, _ = client.request("GET", "/api/channels/watched/connections", headers=secret)
        members = {m["client_id"]: m for m in detail["members"]}
        assert members["victim"]["dialect"] == "c8" and members["victim"]["persistent"] is True
        assert any(m["user"] == "pat" and m["presence"] for m in detail["members"])
        status, _, _ = client.request(
            "POST", "/api/channels/watched/members/victim/disconnect", headers=secret)
        assert status == 200
        code, _ = await closed_with(victim)
        assert code == 4000
        await other.send("cmd_ping")
        while (frame := await recv(other)) != '{"system":"pong"}':
            assert "member_" in frame  # presence events only
    status, _, _ = client.request("POST", "/api/channels/watched/members/nobody/disconnect",
                                  headers=secret)
    assert status == 404


async def test_rest_publish(server: Server) -> None:
    """PieSocket's {key, secret, channelId, message} publishes; bad bodies are refused."""
    client = Client(server.http)
    async with await connect(server.ws("/v3/rest?api_key=demo")) as listener:
        status, body, _ = client.request("POST", "/api/publish", {
            "key": "demo", "secret": server.secret, "channelId": "rest",
            "message": {"event": "hi"}})
        assert status == 200 and body["success"] is True
        assert await recv(listener) == '{"event":"hi"}'
        status, _, _ = client.request("POST", "/api/publish", {
            "key": "demo", "secret": server.secret, "channelId": "rest", "message": "plain"})
        assert await recv(listener) == "plain"
    async with await connect(server.ws("/v3/12345?api_key=demo")) as listener:
        # PieSocket's SDKs take a channel id "as a string or number", and send a number as is.
        status, _, _ = client.request("POST", "/api/publish", {
            "key": "demo", "secret": server.secret, "channelId": 12345, "message": "numbered"})
        assert status == 200 and await recv(listener) == "numbered"
    for bad, code in [
        ({"key": "demo", "secret": server.secret, "channelId": True, "message": 1}, 400),
        ({"key": "demo", "secret": server.secret, "channelId": 1.5, "message": 1}, 400),
        ({"key": "demo", "secret": "nope", "channelId": "rest", "message": 1}, 401),
        ({"key": "demo", "secret": server.secret, "channelId": "a/b", "message": 1}, 400),
        ({"key": "demo", "secret": server.secret, "channelId": "x", "message": 1, "y": 2}, 400),
        ({"key": "demo"}, 400),
    ]:
        assert client.request("POST", "/api/publish", bad)[0] == code
    deep = "[" * 129 + "]" * 129  # nested past 128 levels: refused as a value and as a text
    past_parser = "[" * 1025 + "]" * 1025  # and past what orjson parses: as a text and a body
    bodies = [orjson.dumps({"key": "demo", "secret": server.secret, "channelId": "rest",
                            "message": message}) for message in (orjson.loads(deep), deep,
                                                                  past_parser)]
    for body in [*bodies, b'{"key":"demo","message":' + past_parser.encode() + b"}"]:
        status, answer, _ = client.request("POST", "/api/publish", body)
        assert status == 400 and answer["error"] == {
            "code": "invalid_json", "message": "JSON nested more than 128 levels deep"}


async def test_rest_publish_keeps_the_apps_frame_size_and_rate(
        make_server: Callable[..., Server]) -> None:
    """A REST publish larger than the app's frame size is refused with 413 and reaches nobody;
    past the rate (shared by the app's REST publishes) they get 429; members stay connected."""
    server = make_server({"C8WS_MAX_FRAME_BYTES": "64", "C8WS_MSG_RATE": "0.01",
                          "C8WS_MSG_BURST": "3"})
    client = Client(server.http)

    def rest(message: object) -> tuple[int, dict[str, dict[str, str]]]:
        status, body, _ = client.request("POST", "/api/publish", {
            "key": "demo", "secret": server.secret, "channelId": "guarded", "message": message})
        return status, body

    async with await connect(server.ws("/v3/guarded?api_key=demo")) as listener:
        for too_big in ("x" * 65, {"text": "y" * 60}):
            status, body = rest(too_big)
            assert status == 413 and body["error"]["code"] == "too_large"
            assert "64 bytes" in body["error"]["message"]
        answers = [rest(f"m{number}")[0] for number in range(5)]
        assert answers[:3] == [200, 200, 200] and answers[3:] == [429, 429]
        assert [await recv(listener) for _ in range(3)] == ["m0", "m1", "m2"]
        await listener.send("cmd_ping")
        assert await recv(listener) == '{"system":"pong"}'  # nothing else came, still served


async def test_metrics_and_health(server: Server) -> None:
    """Prometheus text with our metrics; /healthz answers."""
    client = Client(server.http)
    status, text, headers = client.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for name in ("c8ws_connections", "c8ws_channels", "c8ws_deliveries_total",
                 "c8ws_slow_members_dropped_total", "c8ws_store_batch_records_bucket",
                 "c8ws_store_commit_seconds_bucket", "c8ws_messages_in_total"):
        assert name in text
    assert client.request("GET", "/healthz")[:2] == (200, {"status": "ok"})


async def test_export_import_round_trip(make_server: Callable[..., Server],
                                        tmp_path: Path) -> None:
    """10,000 records: NDJSON export (HTTP and CLI), import into a new channel, identical."""
    live = make_server({"C8WS_MSG_RATE": "0"})
    async with await connect(live.ws("/v3/source?api_key=demo&persistent=1&notify_self=1")) as p:
        for number in range(10_000):
            await p.send(orjson.dumps({"n": number, "text": f"message {number}"}).decode())
        for _ in range(10_000):
            await recv(p)
    client = Client(live.http)
    secret = {"X-Api-Secret": live.secret}
    status, exported, headers = client.request("GET", "/api/channels/source/export",
                                               headers=secret)
    assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
    http_lines = exported.strip().split("\n")
    assert len(http_lines) == 10_000
    dump = tmp_path / "source.ndjson"
    cli = [sys.executable, "-m", "app.cli"]
    data = ["--data-dir", str(live.data_dir)]
    subprocess.run([*cli, "export", "--channel", "source", "--output", str(dump), *data],
                   check=True, capture_output=True, timeout=120)
    assert dump.read_text().strip().split("\n") == http_lines
    imported = subprocess.run([*cli, "import", str(dump), "--channel", "copy", *data],
                              check=True, capture_output=True, text=True, timeout=120)
    assert "imported 10,000 records, done" in imported.stderr
    status, copied, _ = client.request("GET", "/api/channels/copy/export", headers=secret)
    assert copied.strip().split("\n") == http_lines
    status, table, headers = client.request("GET", "/api/channels/copy/export?format=csv",
                                            headers=secret)
    rows = list(csv.reader(io.StringIO(table)))
    assert rows[0] == ["seq", "id", "client_id", "created", "username", "data"]
    assert len(rows) == 10_001 and orjson.loads(rows[1][5]) == {"n": 0, "text": "message 0"}


async def test_import_and_export_refuse_json_nested_too_deep(
        make_server: Callable[..., Server], tmp_path: Path) -> None:
    """The CLI import takes data nested 128 levels, as a publish does, and stops at a line
    whose data nests deeper (past what orjson parses, too), naming it (the lines before it are
    imported); the export's `filters` parameter nested that deep is a 400."""
    live = make_server()
    at_limit, deep = "[" * 128 + "]" * 128, "[" * 129 + "]" * 129
    for name, lines in [("deep", [at_limit, deep]), ("past-parser", ["[" * 1025 + "]" * 1025])]:
        dump = tmp_path / f"{name}.ndjson"
        dump.write_text("".join(f'{{"id":"{n}","created":{n},"data":{data}}}\n'
                                for n, data in enumerate(lines, 1)))
        imported = subprocess.run(
            [sys.executable, "-m", "app.cli", "import", str(dump), "--channel", "deepimport",
             "--data-dir", str(live.data_dir)], capture_output=True, text=True, timeout=120)
        assert imported.returncode != 0
        assert (f"line {len(lines)}: JSON nested more than 128 levels deep"
                in imported.stderr), imported.stderr
    client = Client(live.http)
    secret = {"X-Api-Secret": live.secret}
    status, exported, _ = client.request("GET", "/api/channels/deepimport/export",
                                         headers=secret)
    assert [orjson.loads(line)["data"] for line in exported.split()] == [orjson.loads(at_limit)]
    filters = urllib.parse.quote(f'[{{"field":"data","operator":"=","value":{deep}}}]')
    status, answer, _ = client.request(
        "GET", f"/api/channels/deepimport/export?filters={filters}", headers=secret)
    assert status == 400 and answer["error"]["message"] == (
        "JSON nested more than 128 levels deep")
