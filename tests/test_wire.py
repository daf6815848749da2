"""The data plane (app/wire.py): frames built once and written straight to members' sockets."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import orjson
import pytest
from wsproto.frame_protocol import FrameProtocol

from app.cli import KEEPALIVE_IDLE
from app.wire import OPCODE_BINARY, OPCODE_TEXT, direct_socket, frame_bytes
from tests.live import UNIT, Server, connect, recv

LENGTHS = [0, 1, 125, 126, 65_535, 65_536, 70_000]  # each side of the 7-, 16- and 64-bit lengths


@pytest.mark.parametrize("length", LENGTHS)
def test_frames_are_what_wsproto_would_send(length: int) -> None:
    text = "é" * (length // 2) + "a" * (length % 2)
    binary = os.urandom(length)
    server = FrameProtocol(client=False, extensions=[])
    assert frame_bytes(text.encode(), OPCODE_TEXT) == server.send_data(text, fin=True)
    assert frame_bytes(binary, OPCODE_BINARY) == server.send_data(binary, fin=True)


def test_no_direct_socket_behind_another_send() -> None:
    async def send(event: object) -> None:
        del event

    assert direct_socket(send, 1) is None


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(first header byte, payload) of one unmasked server frame."""
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return head[0], await reader.readexactly(length)


async def _handshake(port: int, path: str, extensions: str = "") -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter, str]:
    """A raw client's opening handshake (with `extensions` header lines); the response is
    returned lower-cased."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extensions}\r\n".encode())
    response = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
    assert response.startswith("http/1.1 101"), response
    return reader, writer, response


@pytest.mark.asyncio
async def test_frames_go_uncompressed_to_a_client_that_negotiated_deflate(server: Server) -> None:
    """Hypercorn accepts permessage-deflate and would compress what goes through ASGI (RSV1
    set); frames written directly are plain (RSV1 clear), which RFC 7692 allows. So a plain
    welcome and a plain relayed record show the direct path in use, and that they read right."""
    path = "/c8/wire-direct?api_key=demo"
    async with asyncio.timeout(5 * UNIT):
        reader, writer, response = await _handshake(
            server.port, path, "Sec-WebSocket-Extensions: permessage-deflate\r\n")
        assert "sec-websocket-extensions: permessage-deflate" in response
        first, payload = await _read_frame(reader)
        assert first == 0x81  # FIN, RSV1 clear, text
        assert "welcome" in orjson.loads(payload)
        publisher = await connect(server.ws(path))
        await publisher.send(orjson.dumps({"publish": {"data": {"vote": "x" * 300}}}).decode())
        while True:
            first, payload = await _read_frame(reader)
            assert first == 0x81
            frame = orjson.loads(payload)
            if "message" in frame:
                break
        assert frame["message"]["data"] == {"vote": "x" * 300}
        await publisher.close()
    writer.close()


@pytest.mark.asyncio
async def test_nothing_follows_the_close_hypercorn_sends_on_its_own(server: Server) -> None:
    """A message over Hypercorn's size limit makes it close (1009) without the app hearing of
    it at once; records published next must not follow that close frame (RFC 6455, 5.5.1)."""
    path = "/v3/wire-closed?api_key=demo"
    async with asyncio.timeout(10 * UNIT):
        reader, writer, _ = await _handshake(server.port, path)
        publisher = await connect(server.ws(path))
        await publisher.send("cmd_status")
        await publisher.recv()  # both members are in the channel
        oversized = 2 << 20  # over max(4 x max_frame_bytes, 1 MiB), masked with a zero key
        writer.write(bytes((0x82, 0x80 | 127)) + oversized.to_bytes(8, "big") + bytes(4)
                     + bytes(oversized))
        await writer.drain()
        first, payload = await _read_frame(reader)
        assert first & 0x0F == 0x8 and int.from_bytes(payload[:2], "big") == 1009
        for number in range(3):
            await publisher.send(f"after the close {number}")
        await publisher.send("cmd_status")
        await publisher.recv()  # answered after the three were fanned out
    try:
        async with asyncio.timeout(1 * UNIT):
            extra = await reader.read(1 << 16)
    except TimeoutError:
        extra = b""
    assert extra == b""
    await publisher.close()
    writer.close()


def _tcp_timer(local_port: int, remote_port: int) -> tuple[int, float] | None:
    """(timer kind, seconds until it fires) of the loopback TCP socket with these ports, from
    /proc/net/tcp: kind 2 is the keepalive timer on an established socket, 0 none."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, timer = fields[1], fields[2], fields[5]
        if (int(local.split(":")[1], 16), int(remote.split(":")[1], 16)) == (local_port,
                                                                              remote_port):
            kind, jiffies = timer.split(":")
            return int(kind, 16), int(jiffies, 16) / os.sysconf("SC_CLK_TCK")
    return None


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
async def test_websocket_sockets_keep_alive(server: Server) -> None:
    """The server's end of a WebSocket has TCP keepalive on (set on the listening socket), so
    the kernel finds a peer that vanished without closing."""
    client = await connect(server.ws("/v3/keepalive?api_key=demo"))
    await client.send("cmd_ping")
    assert orjson.loads(await recv(client)) == {"system": "pong"}
    client_port = client.transport.get_extra_info("sockname")[1]
    timer = _tcp_timer(server.port, client_port)
    for _ in range(100):  # until the pong's retransmission timer (kind 1) gives way, once acked
        if timer is None or timer[0] != 1:
            break
        await asyncio.sleep(0.01)
        timer = _tcp_timer(server.port, client_port)
    await client.close()
    assert timer is not None, "the server's end of the connection was not found"
    kind, seconds = timer
    assert kind == 2 and 0 < seconds <= KEEPALIVE_IDLE, timer
