"""c8ws: the application factory. Everything is built here: settings, store, broker, node and
routes; pools and tasks open when serving starts and live on the app object.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from quart import Quart, Response, request

from app.broker import create_broker
from app.config import STATIC_DIR, TEMPLATES_DIR, Settings, load_settings
from app.errors import StoreError
from app.metrics import NodeCollector, StoreMetrics
from app.node import Node
from app.replay import Replays
from app.signin_links import SigninLinks
from app.store import create_store
from app.store.base import App, Store

log = logging.getLogger("c8ws")
EVERY_INTERFACE = ("0.0.0.0", "::", "")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class RawSendMiddleware:
    """Expose the server's ASGI `send` to WebSocket handlers, so member writers can send
    pre-built events without Quart's per-message wrapper."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope = {**scope, "c8ws.send": send}
        await self.inner(scope, receive, send)


async def ensure_demo_app(store: Store, settings: Settings) -> App:
    """The demo app: key from settings, secret random at first start unless configured."""
    app = await store.app_by_name("demo")
    if app is None:
        secret = settings.demo_secret or secrets.token_urlsafe(24)
        try:
            app = await store.create_app("demo", settings.demo_key, secret)
        except StoreError:  # another worker made it first
            app = await store.app_by_name("demo")
            if app is None:
                raise
    elif settings.demo_secret and settings.demo_secret != app.secret:
        await store.set_app_secret(app.id, settings.demo_secret)
        app = await store.app_by_name("demo") or app
    return app


def session_key(settings: Settings) -> str:
    """The key that signs browser sessions: C8WS_SESSION_SECRET, or a random one made once and
    kept (mode 600) in the data directory. Never derived from an app secret, which is shared."""
    if settings.session_secret:
        return settings.session_secret
    path = settings.data_dir / "session.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another worker wrote it first
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(32))
    return path.read_text().strip()


def banner(settings: Settings, demo: App, signin_token: str) -> str:
    """What `serve` prints once started. Its links name this machine where the server listens
    on every interface (0.0.0.0 is no address a browser can open)."""
    scheme = "https" if settings.certfile else "http"
    ws_scheme = "wss" if settings.certfile else "ws"
    host = "127.0.0.1" if settings.host in EVERY_INTERFACE else settings.host
    where = f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"
    base = f"{scheme}://{where}"
    return "\n".join([
        f"c8ws listening on {scheme}://{settings.host}:{settings.port}",
        f"  playground:   {base}/playground",
        f"  sign in:      {base}/signin?token={signin_token}",
        f"  websocket:    {ws_scheme}://{where}/v3/room1?api_key={demo.key}",
        f"  demo api key: {demo.key}",
        f"  demo secret:  {demo.secret}",
    ])


def create_app(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Quart:
    """Build the app; nothing connects until serving starts."""
    settings = load_settings(environ, overrides)
    app = Quart(__name__, static_folder=str(STATIC_DIR), template_folder=str(TEMPLATES_DIR))
    registry = CollectorRegistry()
    store_metrics = StoreMetrics(registry)
    store = create_store(settings.store_url, settings.commit_interval_ms,
                         store_metrics.observe_commit)
    broker = create_broker(settings.broker_url)
    node = Node(settings, store, broker)
    registry.register(NodeCollector(node.stats, node.connection_total, node.channel_total))
    app.extensions["c8ws.metrics"] = registry
    replays = Replays(node)
    app.extensions["c8ws.replays"] = replays
    app.extensions["c8ws.node"] = node
    app.extensions["c8ws.settings"] = settings
    app.config.update(SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SECURE=settings.certfile is not None)

    @app.after_request
    async def share_static_files(response: Response) -> Response:
        """Static files are public: CORS lets the shim be loaded with `crossorigin` by other
        sites and by the playground's sandboxed viewers, whose pages then see the shim's
        errors and unhandled rejections (a failed search) instead of their being muted."""
        if request.endpoint == "static":
            response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    @app.before_serving
    async def open_node() -> None:
        await store.open()
        try:
            demo = await ensure_demo_app(store, settings)
            app.secret_key = session_key(settings)
            await node.start()
        except BaseException:
            await store.close()  # its threads would keep a process that failed to start alive
            raise
        links = app.extensions["c8ws.signin_links"] = SigninLinks(app.secret_key)
        print(banner(settings, demo, links.new(demo.name)), flush=True)

    @app.after_serving
    async def close_node() -> None:
        await replays.stop_all()
        await node.stop()
        await store.close()

    from app import admin, api, docs, views, ws

    app.register_blueprint(ws.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(admin.blueprint)
    app.register_blueprint(views.blueprint)
    app.register_blueprint(docs.blueprint)
    app.asgi_app = RawSendMiddleware(app.asgi_app)  # type: ignore[method-assign,arg-type,assignment]
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return app
