"""The piesocket dialect against a live server: relay, notify_self, commands, refusals."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
import pytest
import websockets

from tests.http import Client
from tests.live import (
    UNIT,
    Server,
    closed_with,
    connect,
    nothing_within,
    recv,
    recv_json,
    recv_kind,
)

pytestmark = pytest.mark.asyncio


async def test_text_is_relayed_verbatim_to_others_not_to_sender(server: Server) -> None:
    """A frame reaches every other member byte for byte; the sender does not get it back."""
    url = server.ws("/v3/relay1?api_key=demo")
    async with await connect(url) as a, await connect(url) as b, await connect(url) as c:
        payload = '{"event":"chat","data":"héllo  "}'
        await a.send(payload)
        assert await recv(b) == payload
        assert await recv(c) == payload
        assert await nothing_within(a)


@pytest.mark.parametrize("flag", ["notify_self", "notify_self=1", "notify_self=true"])
async def test_notify_self_on(server: Server, flag: str) -> None:
    """Bare `notify_self`, `1` and `true` return the sender's own message."""
    async with await connect(server.ws(f"/v3/self-on?api_key=demo&{flag}")) as a:
        await a.send("mine")
        assert await recv(a) == "mine"


@pytest.mark.parametrize("flag", ["notify_self=0", "notify_self=false", ""])
async def test_notify_self_off(server: Server, flag: str) -> None:
    """`0`, `false` and absence keep the sender's own message from it."""
    async with await connect(server.ws(f"/v3/self-off?api_key=demo&{flag}")) as a:
        await a.send("mine")
        assert await nothing_within(a)


async def test_invalid_notify_self_is_refused_with_a_reason(server: Server) -> None:
    """A malformed flag is a fatal frame naming the parameter."""
    async with await connect(server.ws("/v3/x?api_key=demo&notify_self=maybe")) as a:
        code, frames = await closed_with(a)
    assert code == 1008
    assert "notify_self" in frames[0]


async def test_commands_answer_sender_only_byte_exact(server: Server) -> None:
    """cmd_ping and cmd_status answer exactly, to the sender, and are never relayed."""
    url = server.ws("/v3/commands?api_key=demo")
    async with await connect(url) as a, await connect(url + "&notify_self=1") as b:
        await a.send("cmd_ping")
        assert await recv(a) == '{"system":"pong"}'
        await a.send("cmd_status")
        assert await recv(a) == '{"system":{"connection_count":2}}'
        await b.send("cmd_status")
        assert await recv(b) == '{"system":{"connection_count":2}}'
        assert await nothing_within(b)
        assert await nothing_within(a)


async def test_connection_count_follows_joins_and_leaves(server: Server) -> None:
    """cmd_status counts the channel's members as they come and go."""
    url = server.ws("/v3/counting?api_key=demo")
    async with await connect(url) as a:
        async with await connect(url):
            await a.send("cmd_status")
            assert await recv_json(a) == {"system": {"connection_count": 2}}
        for _ in range(50):
            await a.send("cmd_status")
            if await recv_json(a) == {"system": {"connection_count": 1}}:
                break
        else:
            pytest.fail("count never went back to 1")


async def test_unknown_command_is_a_non_fatal_error(server: Server) -> None:
    """An unknown cmd_ gets an error frame and the connection keeps serving."""
    url = server.ws("/v3/unknown-cmd?api_key=demo")
    async with await connect(url) as a, await connect(url) as b:
        await a.send("cmd_launch")
        error = await recv_json(a)
        assert error["system"]["error"]["code"] == "unknown_command"
        await a.send("still here")
        assert await recv(b) == "still here"


async def test_channels_are_isolated(server: Server) -> None:
    """A message in one channel never reaches another."""
    async with await connect(server.ws("/v3/iso-a?api_key=demo")) as a, \
            await connect(server.ws("/v3/iso-b?api_key=demo")) as b, \
            await connect(server.ws("/v3/iso-a?apiKey=demo")) as a2:
        await a.send("for a")
        assert await recv(a2) == "for a"
        assert await nothing_within(b)


async def test_apps_are_isolated(server: Server) -> None:
    """Channel `shared` of one app never meets channel `shared` of another."""
    created = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--name", "other", "--key", "otherkey",
         "--data-dir", str(server.data_dir)], capture_output=True, text=True, check=True,
    )
    assert "otherkey" in created.stdout
    async with await connect(server.ws("/v3/shared?api_key=demo")) as demo, \
            await connect(server.ws("/v3/shared?api_key=otherkey")) as other, \
            await connect(server.ws("/v3/shared?api_key=otherkey")) as other2:
        await other.send("other app")
        assert await recv(other2) == "other app"
        assert await nothing_within(demo)


async def test_binary_frames_are_relayed_as_binary(server: Server) -> None:
    """Binary in, the same bytes out."""
    url = server.ws("/v3/binary?api_key=demo")
    async with await connect(url) as a, await connect(url) as b:
        await a.send(b"\x00\x01\xffbinary")
        assert await recv(b) == b"\x00\x01\xffbinary"


@pytest.mark.parametrize("query", ["", "?api_key=", "?api_key=nope", "?apiKey=wrong"])
async def test_unknown_or_missing_key_is_refused_with_4001(server: Server, query: str) -> None:
    """The client reads a fatal frame, then 4001."""
    async with await connect(server.ws(f"/v3/room{query}")) as client:
        code, frames = await closed_with(client)
    assert code == 4001
    assert len(frames) == 1 and '"error"' in frames[0]


@pytest.mark.parametrize("channel", ["", "a" * 65, "a/b", "a%2Fb", "%C3%A4", "%00", "a%20b"])
async def test_invalid_channel_is_refused_with_4002(server: Server, channel: str) -> None:
    """Empty, too long, slashes, non-ASCII and NUL channel ids get a fatal frame and 4002."""
    async with await connect(server.ws(f"/v3/{channel}?api_key=demo")) as client:
        code, frames = await closed_with(client)
    assert code == 4002
    assert "Invalid channel id" in frames[0]


async def test_longest_valid_channel_is_accepted(server: Server) -> None:
    """64 characters of the allowed set make a valid channel id."""
    url = server.ws(f"/v3/{'A_-9' * 16}?api_key=demo")
    async with await connect(url) as a, await connect(url) as b:
        await a.send("fits")
        assert await recv(b) == "fits"


async def test_oversized_frame_closes_4009_and_others_keep_chatting(server: Server) -> None:
    """Over 64 KiB: fatal frame and 4009 for the sender; the channel carries on."""
    url = server.ws("/v3/oversize?api_key=demo")
    async with await connect(url) as big, await connect(url) as a, await connect(url) as b:
        await big.send("x" * (64 * 1024 + 1))
        code, frames = await closed_with(big)
        assert code == 4009
        assert "too large" in frames[-1]
        await a.send("still fine")
        assert await recv(b) == "still fine"
        assert await nothing_within(a, 0.2)


async def test_frame_at_the_limit_is_relayed(server: Server) -> None:
    """Exactly 64 KiB (counted in UTF-8 bytes) passes."""
    url = server.ws("/v3/at-limit?api_key=demo")
    async with await connect(url) as a, await connect(url) as b:
        payload = "é" * (32 * 1024)
        await a.send(payload)
        assert await recv(b) == payload


async def test_garbage_text_is_relayed_not_fatal(server: Server) -> None:
    """The piesocket dialect relays any text, JSON or not; nothing breaks."""
    url = server.ws("/v3/garbage?api_key=demo")
    async with await connect(url) as a, await connect(url) as b:
        for text in ['{"unterminated', "\u0000\ufffd", "[]", "null", " "]:
            await a.send(text)
            assert await recv(b) == text


@pytest.mark.parametrize("persistent", ["", "&persistent=1"])
async def test_json_nested_too_deep_is_refused_and_reaches_nobody(
        server: Server, persistent: str) -> None:
    """JSON nested past 128 levels could not be sent on to c8 members nor stored: its sender
    gets invalid_json, nobody gets the frame, and the next one (at the limit) goes through.
    So is JSON nested past the 1,024 levels orjson parses (it was relayed as a string), while
    text that stops being JSON before that depth is relayed as ever, brackets and all."""
    channel = f"deep{len(persistent)}"
    url = server.ws(f"/v3/{channel}?api_key=demo{persistent}")
    at_limit, too_deep = "[" * 128 + "]" * 128, "[" * 129 + "]" * 129
    past_parser, not_json = "[" * 1025 + "]" * 1025, "[" * 1000 + "x"
    async with (await connect(url) as a, await connect(url) as b,
                await connect(server.ws(f"/c8/{channel}?api_key=demo")) as c):
        await recv_kind(c, "welcome")
        for text in (too_deep, past_parser):
            await a.send(text)
            error = (await recv_json(a))["system"]["error"]
            assert error == {"code": "invalid_json",
                             "message": "JSON nested more than 128 levels deep"}
        await a.send(not_json)
        assert await recv(b) == not_json
        assert (await recv_kind(c, "message"))["data"] == not_json
        await a.send(at_limit)
        assert await recv(b) == at_limit
        assert orjson.dumps((await recv_kind(c, "message"))["data"]).decode() == at_limit
    status, body, _ = Client(server.http).request(
        "POST", f"/api/channels/{channel}/search", {}, headers={"X-Api-Key": "demo"})
    assert status == 200 and body["total"] == (2 if persistent else 0)  # not_json, at_limit


async def test_shutdown_closes_members_with_1001(make_server: object) -> None:
    """SIGTERM: every member gets close code 1001, and the process exits cleanly."""
    live: Server = make_server()  # type: ignore[operator]
    url = live.ws("/v3/shutdown?api_key=demo")
    async with await connect(url) as a, await connect(url) as b:
        live.process.terminate()  # type: ignore[union-attr]
        results = [await closed_with(a), await closed_with(b)]
    assert [code for code, _ in results] == [1001, 1001]
    assert live.stop() == 0
    with pytest.raises((OSError, websockets.InvalidHandshake)):
        await connect(url)


async def test_clients_coming_straight_back_during_shutdown_are_not_let_in(
        make_server: object) -> None:
    """A client that reconnects the moment it gets 1001 (PieSocket's SDK does) finds the
    shutting-down server no longer listening, or is closed with 1001 again: it used to be let
    in and cut off with 1011 when the grace period ended, a trace logged for each."""
    live: Server = make_server()  # type: ignore[operator]
    url = live.ws("/v3/comeback?api_key=demo")
    codes: list[int | None] = []

    async def stubborn() -> None:
        while True:
            try:
                client = await connect(url)
            except (OSError, websockets.InvalidHandshake):
                return
            code, _ = await closed_with(client, 30)
            codes.append(code)

    clients = [asyncio.create_task(stubborn()) for _ in range(5)]
    async with await connect(url) as probe:
        while True:
            await probe.send("cmd_status")
            if await recv(probe) == '{"system":{"connection_count":6}}':
                break
            await asyncio.sleep(0.05)
        live.process.terminate()  # type: ignore[union-attr]
        await asyncio.wait_for(asyncio.gather(*clients), 30 * UNIT)
    assert live.stop() == 0
    assert codes and set(codes) == {1001}, codes
    assert "Traceback" not in live.log()
