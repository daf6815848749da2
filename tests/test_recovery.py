"""Resuming with `since`/`epoch`: every missed record once, in order, then `recovered`."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from tests.live import Server, closed_with, connect, recv, recv_json, recv_kind

pytestmark = pytest.mark.asyncio


def publish(data: object) -> str:
    return orjson.dumps({"publish": {"data": data, "rid": "r"}}).decode()


async def test_brief_disconnect_misses_nothing(server: Server) -> None:
    """Records published while a member was away arrive on resume, then live ones, no repeats."""
    url = server.ws("/c8/resume1?api_key=demo")
    async with await connect(url) as talker:
        await recv_kind(talker, "welcome")
        async with await connect(url) as viewer:
            welcome = await recv_kind(viewer, "welcome")
            await talker.send(publish(0))
            seen = await recv_kind(viewer, "message")
        for number in range(1, 6):
            await talker.send(publish(number))
            await recv_kind(talker, "reply")
        resume = f"{url}&since={seen['seq']}&epoch={welcome['epoch']}"
        async with await connect(resume) as viewer:
            assert (await recv_json(viewer))["welcome"]["seq"] == seen["seq"] + 5
            missed = [(await recv_json(viewer))["message"]["data"] for _ in range(5)]
            assert missed == [1, 2, 3, 4, 5]
            assert await recv_json(viewer) == {"recovered": {"ok": True, "count": 5}}
            await talker.send(publish(6))
            assert (await recv_kind(viewer, "message"))["data"] == 6


async def test_persistent_records_come_from_the_store(server: Server) -> None:
    """With nobody left in the channel, stored records still fill the gap."""
    url = server.ws("/c8/resume2?api_key=demo&persistent=1")
    async with await connect(url) as first:
        welcome = await recv_kind(first, "welcome")
        for number in range(3):
            await first.send(publish(number))
            await recv_kind(first, "reply")
    async with await connect(f"{url}&since={welcome['seq'] + 1}&epoch={welcome['epoch']}") as again:
        await recv_kind(again, "welcome")
        assert (await recv_json(again))["message"]["data"] == 1
        assert (await recv_json(again))["message"]["data"] == 2
        assert await recv_json(again) == {"recovered": {"ok": True, "count": 2}}


async def test_unfillable_gap_says_reload(server: Server) -> None:
    """Another epoch, or non-stored records nobody kept, give recovered ok:false."""
    url = server.ws("/c8/resume3?api_key=demo")
    async with await connect(url + "&since=0&epoch=someother") as client:
        await recv_kind(client, "welcome")
        assert await recv_json(client) == {"recovered": {"ok": False}}
    async with await connect(url) as first:
        welcome = await recv_kind(first, "welcome")
        await first.send(publish("lost"))
        await recv_kind(first, "reply")
    async with await connect(f"{url}&since={welcome['seq']}&epoch={welcome['epoch']}") as late:
        await recv_kind(late, "welcome")
        assert await recv_json(late) == {"recovered": {"ok": False}}


async def test_piesocket_resume_gets_the_frames(server: Server) -> None:
    """A piesocket member resuming with since gets the missed frames verbatim."""
    url = server.ws("/v3/resume4?api_key=demo")
    async with await connect(url) as talker, await connect(server.ws("/c8/resume4?api_key=demo")) \
            as c8:
        welcome = await recv_kind(c8, "welcome")
        for text in ("one", "two"):
            await talker.send(text)
        async with await connect(f"{url}&since={welcome['seq']}&epoch={welcome['epoch']}") as late:
            assert [await recv(late), await recv(late)] == ["one", "two"]


@pytest.mark.parametrize("with_epoch", [True, False])
async def test_a_since_beyond_the_channel_is_no_resume(server: Server, with_epoch: bool) -> None:
    """A member that claims more than the channel ever had (its seqs were not stored and the
    server restarted, say) is told to reload, and gets every live record from then on: none is
    taken for one it had already seen."""
    url = server.ws(f"/c8/resume5-{with_epoch}?api_key=demo")
    async with await connect(url) as talker:
        welcome = await recv_kind(talker, "welcome")
        epoch = f"&epoch={welcome['epoch']}" if with_epoch else ""
        async with await connect(f"{url}&since={welcome['seq'] + 50}{epoch}") as ahead:
            await recv_kind(ahead, "welcome")
            assert await recv_json(ahead) == {"recovered": {"ok": False}}
            await talker.send(publish("later"))
            assert (await recv_kind(ahead, "message"))["data"] == "later"
        async with await connect(server.ws(f"/v3/resume5-{with_epoch}?api_key=demo"
                                           f"&since={welcome['seq'] + 50}{epoch}")) as ahead:
            await talker.send(publish("later still"))
            assert await recv(ahead) == "later still"


@pytest.mark.parametrize("since", ["99999999999999999999999", "-1", "ten"])
async def test_a_since_out_of_range_is_refused_with_a_reason(server: Server, since: str) -> None:
    """A since no seq can reach closes the connection with 1008 naming the parameter (a number
    past 64 bits used to reach SQLite and fail the handshake with a 500)."""
    async with await connect(server.ws(f"/v3/resume6?api_key=demo&since={since}")) as client:
        code, frames = await closed_with(client)
    assert code == 1008
    assert "since" in frames[0]


async def test_a_gap_larger_than_half_the_queue_says_reload(
    make_server: Callable[..., Server],
) -> None:
    """Missed frames that would fill more than half of the member's outgoing queue are not
    sent: live records arriving while they drained would overflow it (a 4008 close, again on
    every resume of the same gap). The member is told to reload, and live records follow."""
    live = make_server({"C8WS_MAX_QUEUE_BYTES": "65536"})
    url = live.ws("/c8/resume7?api_key=demo&persistent=1")
    async with await connect(url) as talker:
        welcome = await recv_kind(talker, "welcome")
        for number in range(6):  # 6 x 7 KB: above half of 64 KiB
            await talker.send(publish({"n": number, "pad": "x" * 7000}))
            await recv_kind(talker, "reply")
        resume = f"{url}&epoch={welcome['epoch']}&since="
        async with await connect(resume + "2") as fits:  # 4 x 7 KB: below
            await recv_kind(fits, "welcome")
            numbers = [(await recv_json(fits))["message"]["data"]["n"] for _ in range(4)]
            assert numbers == [2, 3, 4, 5]
            assert await recv_json(fits) == {"recovered": {"ok": True, "count": 4}}
        async with await connect(resume + "0") as late:
            await recv_kind(late, "welcome")
            assert await recv_json(late) == {"recovered": {"ok": False}}
            await talker.send(publish("live"))
            assert (await recv_kind(late, "message"))["data"] == "live"
