"""Limits: message rate, connections per app and per IP, channels, origins, frame size."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys

import pytest
import websockets

from tests.live import Server, closed_with, connect, recv, recv_json

pytestmark = pytest.mark.asyncio
_names = itertools.count()


def new_app(server: Server, **limits: str) -> str:
    """A fresh app with `limits` (as `c8ws keys set` flags); returns its key."""
    name = f"limited{next(_names)}"
    key = f"{name}-key"
    base = [sys.executable, "-m", "app.cli", "keys"]
    data = ["--data-dir", str(server.data_dir)]
    subprocess.run([*base, "create", "--name", name, "--key", key, *data], check=True,
                   capture_output=True)
    flags = [part for flag, value in limits.items()
             for part in (f"--{flag.replace('_', '-')}", value)]
    if flags:
        subprocess.run([*base, "set", "--name", name, *flags, *data], check=True,
                       capture_output=True)
    return key


async def test_flood_is_rate_limited_then_closed_others_unaffected(server: Server) -> None:
    """50,000 frames as fast as possible: rate_limited, then 4029; a quiet pair chats on."""
    key = new_app(server, msg_rate="50", msg_burst="100")
    url = server.ws(f"/v3/flood?api_key={key}")
    async with await connect(url) as flooder, await connect(url) as a, await connect(url) as b:
        for number in range(50_000):
            try:
                await flooder.send(f"spam {number}")
            except websockets.ConnectionClosed:
                break
        code, frames = await closed_with(flooder)
        assert code == 4029
        assert any("rate_limited" in frame for frame in frames)
        await b.send("quiet")
        spam = []
        while (frame := await recv(a)) != "quiet":  # what got through before the limit
            spam.append(frame)
        assert 100 <= len(spam) < 1000
        assert spam == [f"spam {number}" for number in range(len(spam))][: len(spam)] or all(
            isinstance(item, str) and item.startswith("spam") for item in spam)


async def test_a_steady_flood_is_closed_and_answered_once(server: Server) -> None:
    """A flood at four times the rate (not all at once): one rate_limited per streak, then 4029
    once a burst's worth was dropped. A token refilling now and then used to start a new run
    each time, so it was never closed and got an error frame every few frames."""
    key = new_app(server, msg_rate="50", msg_burst="20")
    async with await connect(server.ws(f"/v3/steady?api_key={key}")) as flooder:
        loop = asyncio.get_running_loop()
        began, sent = loop.time(), 0
        with contextlib.suppress(websockets.ConnectionClosed):
            while sent < 1000:  # 5 s at 200 a second, were it never closed
                await flooder.send(f"spam {sent}")
                sent += 1
                # On a schedule, not a sleep per frame: sleeps that overrun on a busy machine
                # slowed the flood to twice the rate or less, which is not closed.
                await asyncio.sleep(max(0.0, began + sent / 200 - loop.time()))
        code, frames = await closed_with(flooder)
    assert code == 4029 and sent < 1000
    # Once, unless the server stalled (a busy machine) long enough early on for the bucket to
    # refill and end the streak; never one every few frames.
    assert 1 <= sum("rate_limited" in frame for frame in frames) <= 2


async def test_a_sender_a_little_over_the_rate_only_loses_frames(server: Server) -> None:
    """At 1.5 times the rate for four seconds: frames dropped, the connection kept."""
    key = new_app(server, msg_rate="50", msg_burst="20")
    async with await connect(server.ws(f"/v3/eager?api_key={key}")) as eager:
        loop = asyncio.get_running_loop()
        began = loop.time()
        for number in range(300):
            await eager.send(f"eager {number}")
            await asyncio.sleep(max(0.0, began + (number + 1) / 75 - loop.time()))
        await asyncio.sleep(0.1)  # a few tokens back, for the ping
        await eager.send("cmd_ping")
        refusals = 0
        while (frame := await recv(eager)) != '{"system":"pong"}':
            assert "rate_limited" in frame
            refusals += 1
    assert refusals >= 1  # over the rate all the same


async def test_connections_per_app_and_ip(server: Server) -> None:
    """Past the app's connection limit (or the per-IP one) a fatal frame and 4029."""
    for limit in ("max_connections_per_app", "max_connections_per_ip"):
        key = new_app(server, **{limit: "2"})
        url = server.ws(f"/v3/capacity?api_key={key}")
        async with await connect(url), await connect(url), await connect(url) as third:
            code, frames = await closed_with(third)
        assert code == 4029
        assert "Too many connections" in frames[0]
        async with await connect(url) as again:  # room again once they left
            await again.send("cmd_ping")
            assert await recv_json(again) == {"system": "pong"}


async def test_channels_per_app(server: Server) -> None:
    """An app at its channel limit can join existing channels but not open new ones."""
    key = new_app(server, max_channels_per_app="1")
    async with await connect(server.ws(f"/v3/one?api_key={key}")), \
            await connect(server.ws(f"/v3/one?api_key={key}")) as same, \
            await connect(server.ws(f"/v3/two?api_key={key}")) as other:
        code, frames = await closed_with(other)
        assert code == 4029 and "Too many channels" in frames[0]
        await same.send("cmd_status")
        assert await recv_json(same) == {"system": {"connection_count": 2}}


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [("https://good.example", True), ("null", True), ("https://evil.example", False), (None, True)],
)
async def test_origin_allowlist(server: Server, origin: str | None, allowed: bool) -> None:
    """Listed origins (and `null` only when listed) get in; others get 4004."""
    key = new_app(server, allowed_origins="https://good.example,null")
    url = server.ws(f"/v3/origins?api_key={key}")
    async with await connect(url, origin=origin) as client:  # type: ignore[arg-type]
        if allowed:
            await client.send("cmd_ping")
            assert await recv_json(client) == {"system": "pong"}
        else:
            code, frames = await closed_with(client)
            assert code == 4004 and "Origin not allowed" in frames[0]


async def test_unlisted_null_origin_is_refused(server: Server) -> None:
    """With an allowlist that omits it, a sandboxed iframe's `null` origin is refused."""
    key = new_app(server, allowed_origins="https://good.example")
    async with await connect(server.ws(f"/v3/o?api_key={key}"), origin="null") as client:  # type: ignore[arg-type]
        code, _ = await closed_with(client)
    assert code == 4004


async def test_frame_size_per_app(server: Server) -> None:
    """An app's own frame limit applies: 100 bytes pass, 101 close with 4009."""
    key = new_app(server, max_frame_bytes="100")
    url = server.ws(f"/v3/small?api_key={key}")
    async with await connect(url) as a, await connect(url) as b:
        await a.send("x" * 100)
        assert await recv(b) == "x" * 100
        await a.send("x" * 101)
        code, _ = await closed_with(a)
        assert code == 4009
    await asyncio.sleep(0)


async def test_connections_arriving_together_cannot_pass_the_limit(server: Server) -> None:
    """50 simultaneous connections to new channels against a per-IP limit of 5: 5 get in."""
    key = new_app(server, max_connections_per_ip="5")
    clients = await asyncio.gather(*(connect(server.ws(f"/v3/burst{i}?api_key={key}"))
                                     for i in range(50)))
    try:
        outcomes = await asyncio.gather(*(closed_with(client, 1) for client in clients),
                                        return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, tuple) and o[0] == 4029]
        assert len(refused) == 45
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def test_the_welcome_tells_the_rate_the_connection_is_held_to(server: Server) -> None:
    """The c8 welcome's msg_rate and msg_burst are what the connection's bucket enforces: a
    burst set to 0 still lets one frame through, so the welcome says 1 (it said 0, and a
    client pacing by it would never send)."""
    key = new_app(server, msg_rate="2.5", msg_burst="0")
    async with await connect(server.ws(f"/c8/told?api_key={key}")) as client:
        welcome = (await recv_json(client))["welcome"]
    assert (welcome["msg_rate"], welcome["msg_burst"]) == (2.5, 1)
