"""A member that stops reading is dropped with 4008; everyone else gets everything, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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
    live = make_server({"C8WS_MAX_QUEUE_BYTES": str(1024 * 1024), "C8WS_MSG_RATE": "0"})
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
