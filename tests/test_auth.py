"""Signed users and private channels over live sockets."""

from __future__ import annotations

import time

import jwt
import pytest

from app.auth import AUTH_FAILED
from tests.live import Server, closed_with, connect, recv_json, recv_kind

pytestmark = pytest.mark.asyncio


def token(secret: str, sub: str, **claims: object) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 60, **claims}, secret,
                      algorithm="HS256")


async def test_username_comes_from_the_token_only(server: Server) -> None:
    """The record's username is the token's; query strings and payloads cannot set it."""
    signed = token(server.secret, "names", username="ann")
    url = server.ws("/c8/names?api_key=demo&notify_self=1")
    async with await connect(f"{url}&jwt={signed}&user=mallory") as client:
        await recv_kind(client, "welcome")
        await client.send('{"publish":{"data":{"username":"mallory"}}}')
        record = await recv_kind(client, "message")
    assert record["username"] == "ann"
    async with await connect(f"{url}&user=mallory") as anonymous:
        await recv_kind(anonymous, "welcome")
        await anonymous.send('{"publish":{"data":1}}')
        assert (await recv_kind(anonymous, "message"))["username"] is None


async def test_token_in_header_is_accepted(server: Server) -> None:
    """A `jwt` request header works like the parameter."""
    signed = token(server.secret, "*", user="bo")
    url = server.ws("/c8/private-header?api_key=demo&notify_self=1")
    async with await connect(url, additional_headers={"jwt": signed}) as client:
        await recv_kind(client, "welcome")
        await client.send('{"publish":{"data":1}}')
        assert (await recv_kind(client, "message"))["username"] == "bo"


@pytest.mark.parametrize("case", ["missing", "other channel", "expired", "wrong secret",
                                  "garbage", "no exp", "none alg"])
async def test_private_channels_refuse_bad_tokens(server: Server, case: str) -> None:
    """private-… channels need a valid token for that channel: else the exact error and 4003."""
    tokens = {
        "missing": None,
        "other channel": token(server.secret, "private-other"),
        "expired": jwt.encode({"sub": "private-x", "exp": int(time.time()) - 120},
                              server.secret, algorithm="HS256"),  # past the clock leeway
        "wrong secret": token("not-the-secret-but-long-enough-for-hs256", "private-x"),
        "garbage": "a.b.c",
        "no exp": jwt.encode({"sub": "private-x"}, server.secret, algorithm="HS256"),
        "none alg": jwt.encode({"sub": "private-x", "exp": int(time.time()) + 60}, None,
                               algorithm="none"),
    }
    signed = tokens[case]
    url = server.ws("/v3/private-x?api_key=demo") + (f"&jwt={signed}" if signed else "")
    async with await connect(url) as client:
        code, frames = await closed_with(client)
    assert code == 4003
    assert frames == [f'{{"error":"{AUTH_FAILED}"}}']


async def test_private_channel_with_valid_token(server: Server) -> None:
    """A token for the channel (or `*`) lets the member in."""
    for sub in ("private-ok", "*"):
        url = server.ws(f"/c8/private-ok?api_key=demo&jwt={token(server.secret, sub)}")
        async with await connect(url) as client:
            assert (await recv_kind(client, "welcome"))["channel"] == "private-ok"


async def test_tokens_of_piesockets_server_sdks_are_read_as_they_mean(server: Server) -> None:
    """PieSocket's PHP SDK puts an object in `user` and sets `iat`: the object reaches members
    as its JSON text (it was a Python repr), at most 128 characters, and an `iat` a few seconds
    ahead (the signer's clock) is no refusal."""
    user = {"user_id": "7", "user_info": {"name": "Ann"}}
    signed = token(server.secret, "sdk-users", user=user, iat=int(time.time()) + 5)
    url = server.ws("/v3/sdk-users?api_key=demo&presence=1&uuid=u7")
    async with await connect(f"{url}&jwt={signed}") as client:
        listed = await recv_json(client)
    assert listed["data"]["members"] == [
        {"uuid": "u7", "user": '{"user_id":"7","user_info":{"name":"Ann"}}'}]
    long = token(server.secret, "c8-users", user="x" * 5000)
    async with await connect(server.ws(f"/c8/c8-users?api_key=demo&notify_self=1&jwt={long}")) \
            as client:
        await recv_kind(client, "welcome")
        await client.send('{"publish":{"data":1}}')
        assert (await recv_kind(client, "message"))["username"] == "x" * 128
