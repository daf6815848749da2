"""The framework floor: the least a Quart + Hypercorn relay can do, for c8ws to be compared with.

Same relay semantics as c8ws's PieSocket route (a text frame goes verbatim to every OTHER member
of the channel), none of its features: no keys, no records, no byte limits, no broker. Each
connection has an unbounded `asyncio.Queue` and a writer task doing `await websocket.send(msg)`.
Whatever gap remains between this and c8ws is the cost of c8ws itself.

Run: `python bench/floor_app.py [--port 0]`; prints `floor listening on http://127.0.0.1:PORT`
once ready, SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, websocket

HOST = "127.0.0.1"
MAX_MESSAGE_BYTES = 1024 * 1024

Frame = str | bytes


def create_app() -> Quart:
    """A Quart app with one WebSocket route and a dict of channel -> member queues."""
    app = Quart(__name__)
    channels: dict[str, set[asyncio.Queue[Frame]]] = {}

    @app.before_serving
    async def announce() -> None:
        print(f"floor listening on http://{HOST}:{app.config['FLOOR_PORT']}", flush=True)

    @app.websocket("/v3/<channel>")
    async def relay(channel: str) -> None:
        await websocket.accept()
        queue: asyncio.Queue[Frame] = asyncio.Queue()
        members = channels.setdefault(channel, set())
        members.add(queue)
        writer = asyncio.create_task(write(queue))
        try:
            await read(queue, members)
        finally:
            members.discard(queue)
            if not members:
                channels.pop(channel, None)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    return app


async def read(own: asyncio.Queue[Frame], members: set[asyncio.Queue[Frame]]) -> None:
    """Put every received frame into every other member's queue, until the peer goes."""
    while True:
        message = await websocket.receive()
        for queue in members:
            if queue is not own:
                queue.put_nowait(message)


async def write(queue: asyncio.Queue[Frame]) -> None:
    """The one place that awaits this connection's socket."""
    while True:
        await websocket.send(await queue.get())


def listen(port: int) -> socket.socket:
    """Bind the socket here, so the port is known before Hypercorn starts (fd:// binding)."""
    sock = socket.create_server((HOST, port))
    sock.set_inheritable(True)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 for any free port")
    args = parser.parse_args()
    sock = listen(args.port)
    app = create_app()
    app.config["FLOOR_PORT"] = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.websocket_max_message_size = MAX_MESSAGE_BYTES

    async def shutdown_trigger() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    asyncio.run(serve(app, config, shutdown_trigger=shutdown_trigger))


if __name__ == "__main__":
    main()
