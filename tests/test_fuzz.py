"""Abuse: random frames at both dialects while honest members chat; mass drops without close."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

import orjson
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.live import Server, StalledClient, connect, recv, recv_json, recv_kind

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
C8_KINDS = st.sampled_from(["publish", "search", "welcome", "message", "", "__proto__"])
FRAMES = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
    JSON.map(lambda value: orjson.dumps(value).decode()),
    st.builds(lambda kind, body: orjson.dumps({kind: body}).decode(), C8_KINDS, JSON),
    st.builds(lambda query: orjson.dumps({"search": {"rid": "f", "query": query}}).decode(),
              JSON),
    st.sampled_from(["cmd_ping", "cmd_status", "cmd_", "cmd_\x00", "cmd_status\n"]),
)


async def _fuzz_round(server: Server, frames: list[str | bytes], round_id: int) -> None:
    channel = f"fuzz{round_id}"
    honest_url = server.ws(f"/c8/{channel}?api_key=demo")
    async with await connect(server.ws(f"/v3/{channel}?api_key=demo")) as pie_fuzzer, \
            await connect(server.ws(f"/c8/{channel}?api_key=demo&persistent=1")) as c8_fuzzer, \
            await connect(honest_url) as alice, await connect(honest_url) as bob:
        await recv_kind(alice, "welcome")
        await recv_kind(bob, "welcome")
        for index, frame in enumerate(frames):
            for fuzzer in (pie_fuzzer, c8_fuzzer):
                with contextlib.suppress(websockets.ConnectionClosed):
                    await fuzzer.send(frame)
            text = orjson.dumps({"publish": {"data": {"honest": index}}}).decode()
            await alice.send(text)
            while True:  # the fuzzers' relayed frames arrive too; honest ones in order
                data = (await recv_kind(bob, "message"))["data"]
                if isinstance(data, dict) and "honest" in data:
                    assert data == {"honest": index}
                    break


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(frames=st.lists(FRAMES, min_size=1, max_size=15))
def test_fuzzed_frames_never_disturb_honest_members(server: Server,
                                                     frames: list[str | bytes]) -> None:
    """Whatever the fuzzers send, alice's messages all reach bob, and nothing crashes."""
    test_fuzzed_frames_never_disturb_honest_members.rounds += 1  # type: ignore[attr-defined]
    round_id = test_fuzzed_frames_never_disturb_honest_members.rounds  # type: ignore[attr-defined]
    asyncio.run(_fuzz_round(server, frames, round_id))
    assert "Traceback" not in server.log(), server.log()[-3000:]


test_fuzzed_frames_never_disturb_honest_members.rounds = 0  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_mass_drop_without_close_frames_restores_counts(server: Server) -> None:
    """2,000 members dropped with RST (no close frame): counts and presence return to the
    truth."""
    path = "/v3/massdrop?api_key=demo&presence=1"
    async with await connect(server.ws("/v3/massdrop?api_key=demo&uuid=watcher")) as watcher:
        dropped = 0
        for batch in range(20):
            clients = await asyncio.to_thread(
                lambda b=batch: [StalledClient(server.port, f"{path}&uuid=d{b}-{i}")
                                 for i in range(100)])
            await watcher.send("cmd_status")
            while True:
                frame = await recv_json(watcher)
                if "system" in frame:
                    break
            for client in clients:
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
            dropped += len(clients)
        assert dropped == 2000
        for _ in range(200):
            await watcher.send("cmd_status")
            frame = await recv(watcher)
            if frame == '{"system":{"connection_count":1}}':
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the count never came back to 1")
        for _ in range(100):  # dropped uuids leave the roster after the grace period
            async with await connect(server.ws(path + "&uuid=late")) as late:
                members = (await recv_json(late))["data"]["members"]
            if [m["uuid"] for m in members] == ["watcher", "late"]:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"ghost members remain: {len(members)}")
