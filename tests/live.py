"""A real c8ws server in a child process, and helpers to talk to it.

The server binds port 0 and prints its URL; the fixture waits on that line (never a sleep) and
fails fast if the process dies. Waits are multiples of `UNIT`, scaled by C8WS_TEST_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

UNIT = float(os.environ.get("C8WS_TEST_TIMEOUT", "1.0"))
"""One timeout unit in seconds; every wait in the tests is a multiple of it."""

READY = re.compile(r"c8ws listening on (https?)://([\d.]+):(\d+)")


class Server:
    """A `c8ws serve` child process with its own data directory."""

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = dict(env or {})
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.output: list[str] = []
        self.secret = ""

    def start(self) -> Server:
        env = {**os.environ, "C8WS_DATA_DIR": str(self.data_dir), "C8WS_PORT": "0",
               "PYTHONUNBUFFERED": "1", **self.env}
        self.output = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"], env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(ready,), daemon=True).start()
        if not ready.wait(20 * UNIT) or not self.port:
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.output))
        deadline = time.monotonic() + 5 * UNIT
        while not self.secret and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def _pump(self, ready: threading.Event) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            match = READY.search(line)
            if match:
                self.port = int(match.group(3))
                ready.set()
            if "demo secret:" in line:
                self.secret = line.split("demo secret:", 1)[1].strip()
        ready.set()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the server and wait for it; returns its exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(20 * UNIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return "".join(self.output)


async def connect(url: str, **kwargs: Any) -> ClientConnection:
    """A client that buffers what it does not read (so closing never waits on flow control)."""
    return await websockets.connect(url, open_timeout=10 * UNIT, max_queue=None, **kwargs)


async def recv(client: ClientConnection, timeout: float = 5) -> str | bytes:
    return await asyncio.wait_for(client.recv(), timeout * UNIT)


async def recv_json(client: ClientConnection, timeout: float = 5) -> Any:
    return orjson.loads(await recv(client, timeout))


async def recv_kind(client: ClientConnection, kind: str, timeout: float = 5) -> Any:
    """The next c8 frame of `kind` (skipping e.g. `connections` updates)."""
    deadline = asyncio.get_running_loop().time() + timeout * UNIT
    while True:
        left = deadline - asyncio.get_running_loop().time()
        frame = orjson.loads(await asyncio.wait_for(client.recv(), max(left, 0.001)))
        if kind in frame:
            return frame[kind]


async def nothing_within(client: ClientConnection, seconds: float = 0.3) -> bool:
    """True when no frame arrives within `seconds` units."""
    try:
        await asyncio.wait_for(client.recv(), seconds * UNIT)
    except TimeoutError:
        return True
    return False


async def closed_with(client: ClientConnection, timeout: float = 5) -> tuple[int | None, list[Any]]:
    """Read until the server closes; returns the close code and the frames read on the way."""
    frames: list[Any] = []
    try:
        while True:
            frames.append(await asyncio.wait_for(client.recv(), timeout * UNIT))
    except websockets.ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else None), frames


class StalledClient:
    """A WebSocket client that completes the handshake and then never reads, with a tiny
    receive buffer, so the server's writes back up at once; later it can read everything."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def read_until_close(self, timeout: float = 30) -> tuple[int | None, int]:
        """Drain the socket; returns (close code, number of data frames before it)."""
        self.sock.settimeout(timeout * UNIT)
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            buffer += self.sock.recv(65536)
        del buffer[: buffer.index(b"\r\n\r\n") + 4]
        frames = 0
        while True:
            frame = _take_frame(buffer)
            if frame is None:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return None, frames
                buffer += chunk
                continue
            opcode, payload = frame
            if opcode == 8:
                return int.from_bytes(payload[:2], "big"), frames
            frames += 1

    def close(self) -> None:
        self.sock.close()


def _take_frame(buffer: bytearray) -> tuple[int, bytes] | None:
    """Pop one unmasked server frame off `buffer`, or None if it is incomplete."""
    if len(buffer) < 2:
        return None
    opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        length, offset = int.from_bytes(buffer[2:4], "big"), 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        length, offset = int.from_bytes(buffer[2:10], "big"), 10
    if len(buffer) < offset + length:
        return None
    payload = bytes(buffer[offset: offset + length])
    del buffer[: offset + length]
    return opcode, payload
