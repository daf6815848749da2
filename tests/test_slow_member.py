"""A member that stops reading is dropped with 4008; everyone else gets everything, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import pytest

from tests.live import UNIT, Server, StalledClient, connect, recv

pytestmark = pytest.mark.asyncio

MESSAGES = 10_000
PAYLOAD = 2_000  # bytes per message: 20 MB in all, far more than socket buffers hold
WINDOW = 200


async def test_stalled_reader_is_dropped_others_get_all_in_order(
    make_server: Callable[..., Server],
) -> None:
    """10,000 messages: the stalled member closes with 4008, two readers get all 10,000 in order,
    and the server's memory stays bounded by the queue limit, not by what was published."""
    # A long grace: the stalled member reads what it was sent only at the end.
    live = make_server({"C8WS_MAX_QUEUE_BYTES": str(1024 * 1024), "C8WS_MSG_RATE": "0",
                        "C8WS_SHUTDOWN_TIMEOUT": "120"})
    path = "/v3/slow?api_key=demo"
    stalled = StalledClient(live.port, path)
    readers = [await connect(live.ws(path)) for _ in range(2)]
    publisher = await connect(live.ws(path))
    await publisher.send("cmd_status")
    assert await recv(publisher) == '{"system":{"connection_count":4}}'
    rss_before = live.rss_kib()
    received: list[list[int]] = [[], []]

    async def read(index: int) -> None:
        while len(received[index]) < MESSAGES:
            frame = await recv(readers[index], 30)
            assert isinstance(frame, str)
            received[index].append(int(frame[:8]))

    tasks = [asyncio.create_task(read(i)) for i in range(2)]
    filler = "x" * (PAYLOAD - 8)
    for number in range(MESSAGES):
        await publisher.send(f"{number:08d}{filler}")
        if number % WINDOW == WINDOW - 1:
            while min(len(r) for r in received) < number + 1 - WINDOW:
                await asyncio.sleep(0.005)
    await asyncio.wait_for(asyncio.gather(*tasks), 60 * UNIT)
    rss_after = live.rss_kib()

    assert received[0] == list(range(MESSAGES))
    assert received[1] == list(range(MESSAGES))
    await publisher.send("cmd_status")
    assert await recv(publisher) == '{"system":{"connection_count":3}}'
    code, frames = await asyncio.to_thread(stalled.read_until_close)
    stalled.close()
    assert code == 4008
    assert frames < MESSAGES // 2  # it was cut off, not fed everything
    assert rss_after - rss_before < 48 * 1024, f"RSS grew by {rss_after - rss_before} KiB"
    for client in (publisher, *readers):
        await client.close()


async def test_a_peer_that_reads_nothing_is_cut_off(
    make_server: Callable[..., Server],
) -> None:
    """Closed with 4008 while it reads nothing, a peer cannot take even the close frame (it
    waits behind what is buffered): its connection is aborted C8WS_SHUTDOWN_TIMEOUT later
    instead of holding its socket, and what is buffered for it, for good."""
    live = make_server({"C8WS_MAX_QUEUE_BYTES": str(256 * 1024), "C8WS_MSG_RATE": "0",
                        "C8WS_SHUTDOWN_TIMEOUT": "0.5"})
    path = "/v3/cutoff?api_key=demo"
    stalled = StalledClient(live.port, path)
    publisher = await connect(live.ws(path))
    for _ in range(100):
        await publisher.send("cmd_status")
        if await recv(publisher) == '{"system":{"connection_count":2}}':
            break
    else:
        raise AssertionError("the stalled client never joined")
    filler = "x" * PAYLOAD
    count = 1
    for sent in range(MESSAGES):  # far past the socket buffers, the transport and the queue
        await publisher.send(filler)
        if sent % WINDOW == WINDOW - 1:
            await publisher.send("cmd_status")
            count = int(orjson.loads(await recv(publisher))["system"]["connection_count"])
            if count == 1:
                break
    assert count == 1, "the stalled member was never dropped"
    await asyncio.sleep(2 * UNIT)  # past the grace: the server has aborted the connection

    try:
        code, frames = await asyncio.to_thread(stalled.read_until_close, 10)
    except ConnectionResetError:
        code, frames = None, 0
    finally:
        stalled.close()
    assert code is None, f"the connection was kept: a close {code} after {frames} frames"
    await publisher.send("cmd_ping")
    assert await recv(publisher) == '{"system":"pong"}'  # everyone else is still served
    await publisher.close()
