"""The `c8ws` console script: serve, and manage apps (keys)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import wait
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

from app.broker import create_broker
from app.broker.base import BrokerError
from app.config import MIB, Settings, env_name, load_settings
from app.devcert import write_dev_cert
from app.errors import ConfigError, StoreError
from app.limits import OVERRIDABLE, parse_override
from app.node import Node
from app.schemas import CHANNEL_PATTERN
from app.store import create_store
from app.store.base import Store
from app.transfer import export_channel, import_channel

# Middle-generation collections between two full ones (CPython's default is 10).
FULL_COLLECTION_THRESHOLD = 100
# TCP keepalive for every connection, set on the listening socket (Linux's accepted sockets
# inherit it): the kernel finds a peer that vanished without closing (a laptop shut, a network
# gone) after KEEPALIVE_IDLE quiet seconds and the probes, and one that stopped acknowledging
# what is sent to it after KEEPALIVE_TIMEOUT; then its member leaves counts and presence. Unlike
# WebSocket pings (C8WS_PING_INTERVAL, off by default), which also catch peers that are there
# but silent, it costs the process nothing per connection.
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 10
KEEPALIVE_PROBES = 6
KEEPALIVE_TIMEOUT = KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_PROBES  # seconds
STOP_POLL = 0.1  # seconds between a worker's looks at its parent's stop event
# Seconds Hypercorn's grace period lasts past C8WS_SHUTDOWN_TIMEOUT. The node closes every
# member at the stop and cuts off, after C8WS_SHUTDOWN_TIMEOUT, those that do not go (a peer
# that reads nothing); ending at the same moment, Hypercorn would sometimes cancel one first,
# which Python 3.11's asyncio logs as a trace per connection.
GRACE_MARGIN = 1.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="c8ws", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve WebSockets, the API and the pages")
    serve.add_argument("--host", help="interface to bind (C8WS_HOST, default 127.0.0.1)")
    serve.add_argument("--port", help="port, 0 for any free one (C8WS_PORT, default 8000)")
    serve.add_argument("--data-dir", help="where the SQLite file, session.key and dev-cert's "
                       "pair live (C8WS_DATA_DIR, ./var)")
    serve.add_argument("--certfile", help="TLS certificate, PEM (C8WS_CERTFILE)")
    serve.add_argument("--keyfile", help="TLS private key, PEM (C8WS_KEYFILE)")
    serve.add_argument("--workers", help="worker processes, >1 needs the redis broker "
                                         "(C8WS_WORKERS, default 1)")

    cert = commands.add_parser("dev-cert", help="make a self-signed TLS pair for local testing")
    cert.add_argument("--out-dir", default=None, help="where to write (default: the data dir)")
    cert.add_argument("--host", action="append", default=None,
                      help="a name or IP the certificate is for (repeatable; default "
                           "127.0.0.1 and localhost)")

    export = commands.add_parser("export", help="write a channel's stored records")
    export.add_argument("--app", default="demo", help="the app's name (default demo)")
    export.add_argument("--channel", required=True)
    export.add_argument("--format", choices=("ndjson", "csv"), default="ndjson")
    export.add_argument("--output", help="file to write (default: standard output)")
    export.add_argument("--data-dir", help="as for serve")
    load = commands.add_parser("import", help="append NDJSON records to a channel")
    load.add_argument("file", help="an NDJSON export ('-' for standard input)")
    load.add_argument("--app", default="demo", help="the app's name (default demo)")
    load.add_argument("--channel", required=True, help="the channel to append to")
    load.add_argument("--data-dir", help="as for serve")

    keys = commands.add_parser("keys", help="manage apps and their keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create an app; prints its key and secret")
    create.add_argument("--name", required=True)
    create.add_argument("--key", help="the api key (default: random)")
    create.add_argument("--data-dir", help="as for serve")
    listing = key_commands.add_parser("list", help="list apps and their keys")
    listing.add_argument("--data-dir", help="as for serve")
    limits = key_commands.add_parser("set", help="set an app's limits and allowed origins")
    limits.add_argument("--name", required=True)
    limits.add_argument("--data-dir", help="as for serve")
    for name in OVERRIDABLE:
        limits.add_argument(f"--{name.replace('_', '-')}", dest=name,
                            help="comma-separated, 'null' for sandboxed iframes"
                            if name == "allowed_origins" else None)
    return parser


def _overrides(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name in names}


def serve(args: argparse.Namespace) -> None:
    from hypercorn.config import Config

    overrides = _overrides(args, ("host", "port", "data_dir", "certfile", "keyfile", "workers"))
    settings = load_settings(overrides=overrides)
    try:
        sock = socket.create_server((settings.host, settings.port))
    except OSError as error:
        raise ConfigError(f"C8WS_PORT: cannot listen on {settings.host}:{settings.port}: "
                          f"{error.strerror}") from None
    asyncio.run(reach_engines(settings))
    sock.set_inheritable(True)
    keep_alive(sock)
    overrides["port"] = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = settings.shutdown_timeout + GRACE_MARGIN
    config.websocket_max_message_size = max(4 * settings.max_frame_bytes, MIB)
    if settings.ping_interval:
        # Pings every interval; a peer silent for three of them is gone (no ghost members).
        config.websocket_ping_interval = settings.ping_interval
        config.read_timeout = int(3 * settings.ping_interval)
    if settings.certfile and settings.keyfile:
        config.certfile = str(settings.certfile)
        config.keyfile = str(settings.keyfile)
    if settings.workers > 1:
        serve_workers(config, settings.workers, overrides, sock)
    else:
        run_server(config, overrides)


async def reach_engines(settings: Settings) -> None:
    """Open the store (applying its migrations) and start the broker once, then let both go:
    an engine that cannot be reached stops `serve` with one line before it serves, and the
    workers of `serve --workers N` find the migrations done."""
    store = create_store(settings.store_url)
    try:
        await store.open()
        broker = create_broker(settings.broker_url)
        await broker.start(lambda record: None, lambda key: store.last_seq(*key))
        await broker.close()
    except BrokerError as error:
        raise ConfigError(f"C8WS_BROKER_URL: {error}") from None
    finally:
        await store.close()


def keep_alive(sock: socket.socket) -> None:
    """TCP keepalive as above, with the options this platform has."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                          ("TCP_KEEPCNT", KEEPALIVE_PROBES),
                          ("TCP_USER_TIMEOUT", KEEPALIVE_TIMEOUT * 1000)):
        if hasattr(socket, option):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def settle_heap() -> None:
    """Keep the garbage collector's full passes rare and short in a long-running server. What
    start-up built (modules, the app, its routes) is most of the heap and lives as long as the
    process: frozen, no full pass walks it again. Records waiting for their commit outlive the
    young passes and, with CPython's thresholds, bring a full pass on several times a second
    (~50-80 ms of the event loop each); reference counting frees nearly everything else, so
    rarer full passes leave little behind. The young threshold stays: raised to 10,000, it
    cost fan-out 3-8 % (bench/RESULTS.md, notes)."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_THRESHOLD)


def serving_app(overrides: dict[str, Any] | None = None) -> Any:
    """The app a serving process runs, its heap settled: `serve`'s, and each worker's of
    `serve --workers N` (which build it from the environment)."""
    from app import create_app

    app = create_app(overrides)
    settle_heap()
    return app


def run_server(config: Any, overrides: dict[str, Any] | None = None,
               stop: EventType | None = None, sockets: Any = None) -> None:
    """Serve in this process until SIGINT or SIGTERM, or until `stop` is set (by the parent of
    workers). Then Hypercorn stops listening, at once (clients that come straight back find
    another server, or none), and waits for the connections through its grace period, while
    the node closes its members with 1001: nothing else would, and Hypercorn cancels what is
    left after the grace period (1011)."""
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.utils import wrap_app

    app = serving_app(overrides)
    node: Node = app.extensions["c8ws.node"]

    async def shutdown_trigger() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        while not stopping.is_set() and not (stop is not None and stop.is_set()):
            with contextlib.suppress(TimeoutError):  # one process alone waits, not polls
                await asyncio.wait_for(stopping.wait(), None if stop is None else STOP_POLL)
        draining.append(asyncio.create_task(node.drain(), name="drain"))

    draining: list[asyncio.Task[None]] = []  # kept referenced while it runs

    asyncio.run(worker_serve(wrap_app(app, config.wsgi_max_body_size, None), config,
                             sockets=sockets, shutdown_trigger=shutdown_trigger))


def serve_workers(config: Any, workers: int, overrides: dict[str, Any],
                  listening: socket.socket) -> None:
    """Several processes on one socket: each builds the app from the environment (the flags are
    passed on as C8WS_* variables) and they meet through the redis broker. SIGINT or SIGTERM
    here stops them all gracefully (those still at work after twice the grace period and a few
    seconds are killed); a worker that ends by itself ends the others too."""
    for name, value in overrides.items():
        if value is not None:
            os.environ[env_name(name)] = str(value)
    sockets = config.create_sockets()
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    stopping = False

    def on_signal(*_: Any) -> None:
        nonlocal stopping
        if not stopping:  # once: the event's lock is not reentrant
            stopping = True
            stop.set()

    # Workers start with SIGINT ignored (a Ctrl-C reaches the whole process group, and would
    # interrupt one half started): the parent tells them through `stop`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    processes = [context.Process(target=run_server, args=(config, None, stop, sockets),
                                 name=f"c8ws-worker-{number}") for number in range(workers)]
    for process in processes:
        process.start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    # The workers have the socket now; without the parent's copy it stops listening with them.
    for held in [*sockets.secure_sockets, *sockets.insecure_sockets]:
        held.detach()
    listening.close()
    exitcode, deadline = 0, None
    running = list(processes)
    while running:
        wait([process.sentinel for process in running], timeout=1)
        for process in [process for process in running if process.exitcode is not None]:
            running.remove(process)
            if not stopping:
                exitcode = process.exitcode if process.exitcode and process.exitcode > 0 else 1
                on_signal()
        if stopping and running:
            deadline = deadline or time.monotonic() + 2 * config.graceful_timeout + 5
            if time.monotonic() > deadline:
                for process in running:
                    process.kill()
    sys.exit(exitcode)


async def _transfer(args: argparse.Namespace) -> None:
    if not CHANNEL_PATTERN.fullmatch(args.channel):
        raise ConfigError("--channel: use 1 to 64 letters, digits, '_' or '-'")
    store = await existing_store(load_settings(overrides=_overrides(args, ("data_dir",))))
    try:
        app = await store.app_by_name(args.app)
        if app is None:
            raise ConfigError(f"--app: there is no app called {args.app!r}")
        if args.command == "export":
            with contextlib.ExitStack() as stack:
                out = (stack.enter_context(open(args.output, "w", newline="", encoding="utf-8"))
                       if args.output else sys.stdout)
                await export_channel(store, app.id, args.channel, args.format, out)
        else:
            with contextlib.ExitStack() as stack:
                lines = (sys.stdin if args.file == "-"
                         else stack.enter_context(open(args.file, encoding="utf-8")))
                await import_channel(store, app.id, args.channel, lines)
    finally:
        await store.close()


async def existing_store(settings: Settings, *, new_ok: bool = False) -> Store:
    """The opened store of a command run beside a server. Its SQLite file not being there is
    taken for a mistyped --data-dir, not made (unless `new_ok`: `keys create` may go first)."""
    if not (new_ok or settings.database_url or settings.sqlite_file.exists()):
        raise ConfigError(f"--data-dir: there is no database at {settings.sqlite_file} "
                          "(`c8ws serve` makes it)")
    store = create_store(settings.store_url)
    await store.open()
    return store


async def _keys(args: argparse.Namespace) -> None:
    store = await existing_store(load_settings(overrides=_overrides(args, ("data_dir",))),
                                 new_ok=args.keys_command == "create")
    try:
        if args.keys_command == "create":
            if await store.app_by_name(args.name) is not None:
                raise ConfigError(f"--name: an app called {args.name!r} exists already")
            if args.key and await store.app_by_key(args.key) is not None:
                raise ConfigError(f"--key: another app has the api key {args.key!r}")
            app = await store.create_app(args.name, args.key or secrets.token_hex(10),
                                         secrets.token_urlsafe(24))
            print(f"name:   {app.name}\napi key: {app.key}\nsecret: {app.secret}")
        elif args.keys_command == "set":
            found = await store.app_by_name(args.name)
            if found is None:
                raise ConfigError(f"--name: there is no app called {args.name!r}")
            changes = {name: parse_override(name, getattr(args, name)) for name in OVERRIDABLE
                       if getattr(args, name) is not None}
            kept = {name: value for name, value in {**found.settings, **changes}.items()
                    if value is not None}
            await store.set_app_settings(found.id, kept)
            for name, value in sorted(kept.items()):
                print(f"{name}: {value}")
        else:
            for app in await store.list_apps():
                print(f"{app.name}\t{app.key}")
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            serve(args)
        elif args.command == "dev-cert":
            out = Path(args.out_dir) if args.out_dir else load_settings().data_dir
            certfile, keyfile = write_dev_cert(out, args.host or ["127.0.0.1", "localhost"])
            print(f"certificate: {certfile}\nkey:         {keyfile}\n"
                  f"serve with:  c8ws serve --certfile {certfile} --keyfile {keyfile}")
        elif args.command in ("export", "import"):
            asyncio.run(_transfer(args))
        else:
            asyncio.run(_keys(args))
    except (ConfigError, StoreError, OSError) as error:
        print(f"c8ws: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
