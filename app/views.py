"""Pages: the playground, one widget alone for embedding, and admin sign-in."""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from quart import (
    Blueprint,
    Response,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers.response import Response as WerkzeugResponse

from app.access import (
    HTTPError,
    app_by_secret,
    csrf_ok,
    csrf_token,
    current_node,
    sign_in,
    signed_in_app,
    signed_out_notice,
)
from app.auth import PRIVATE_PREFIX, sign_token
from app.errors import ErrorCode
from app.schemas import CHANNEL_PATTERN
from app.signin_links import SigninLinks
from app.widgets import find_widget

blueprint = Blueprint("views", __name__)
blueprint.add_app_template_global(csrf_token)  # for the sign-out form on every page


def _page_config(**extra: Any) -> str:
    """JSON for a page's inline config, safe inside <script>: no `<` at all, so neither `</`
    nor `<!--` can change how the page is parsed."""
    return orjson.dumps(extra).decode().replace("<", "\\u003c")


@blueprint.get("/")
async def index() -> WerkzeugResponse:
    return redirect(url_for("views.playground"))


@blueprint.get("/playground")
async def playground() -> str:
    app = await signed_in_app()
    shown = app or await current_node().store.app_by_name("demo")  # signed in: the app's own
    config = _page_config(
        apiKey=shown.key if shown else "", signedIn=app is not None, csrf=csrf_token(),
        persistent=True,
    )
    return await render_template("playground.html", config=config,
                                 signed_in=app.name if app else None)


@blueprint.get("/embed/<widget_id>")
async def embed(widget_id: str) -> str | tuple[str, int]:
    """One widget alone, for another page's iframe; `channel` and `user` from the query.
    Errors are a line of text in that iframe, not the API's JSON."""
    try:
        return await _embedded(widget_id)
    except HTTPError as error:
        return await render_template("embed_error.html", message=error.message), error.status


async def _embedded(widget_id: str) -> str:
    node = current_node()
    key = request.args.get("api_key")
    app = await (node.app_by_key(key) if key else node.store.app_by_name("demo"))
    if app is None:
        raise HTTPError(404, ErrorCode.NOT_FOUND, "unknown api key")
    found = await find_widget(node.store, app.id, widget_id)
    if found is None:
        raise HTTPError(404, ErrorCode.NOT_FOUND, f"no widget {widget_id!r}")
    widget, _ = found
    channel = request.args.get("channel", widget_id)
    if not CHANNEL_PATTERN.fullmatch(channel):
        raise HTTPError(400, ErrorCode.INVALID_REQUEST, "invalid channel id")
    c8ws: dict[str, Any] = {"apiKey": app.key, "channel": channel, "persistent": True,
                            "notifySelf": True}
    # Only the demo app lends names to embeds, and never for private channels: any other app's
    # widgets get their users' tokens from the embedding page (C8WS.token), signed by its owner.
    if app.name == "demo" and not channel.startswith(PRIVATE_PREFIX):
        user = request.args.get("user") or f"guest-{secrets.token_hex(2)}"
        c8ws["token"] = sign_token(app.secret, channel, user[:64])
    config = _page_config(widget={"html": widget.html, "css": widget.css, "js": widget.js},
                          c8ws=c8ws)
    return await render_template("embed.html", config=config, title=widget.name)


def _local_path(target: str | None) -> str | None:
    """`next` only ever leads to a page of this server (no open redirect)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return None


@blueprint.get("/connections")
async def connections() -> WerkzeugResponse | str:
    """Live channels and members of the signed-in app."""
    app = await signed_in_app()
    if app is None:
        return redirect(url_for("views.signin_form", next="/connections"))
    config = _page_config(csrf=csrf_token())
    return await render_template("connections.html", config=config, signed_in=app.name)


@blueprint.get("/history/<channel>")
async def history(channel: str) -> WerkzeugResponse | str:
    """A channel's stored records: filters, sort, paging, groupBy chart, export."""
    app = await signed_in_app()
    if app is None:
        return redirect(url_for("views.signin_form", next=f"/history/{channel}"))
    config = _page_config(csrf=csrf_token(), channel=channel, apiKey=app.key)
    return await render_template("history.html", config=config, channel=channel,
                                 signed_in=app.name)


@blueprint.get("/signin")
async def signin_form() -> WerkzeugResponse | str:
    """A one-time token from the start-up banner signs in at once; otherwise the form."""
    token = request.args.get("token")
    if token:
        links: SigninLinks = current_app.extensions["c8ws.signin_links"]
        name = links.take(token)
        app = None if name is None else await current_node().store.app_by_name(name)
        if app is not None:
            sign_in(app)
            return redirect(url_for("views.playground"))
        return await render_template(
            "signin.html", error="That sign-in link was used already, or is too old.",
            csrf=csrf_token())
    return await render_template("signin.html", error=signed_out_notice(), csrf=csrf_token())


@blueprint.post("/signin")
async def signin() -> WerkzeugResponse | tuple[str, int]:
    form = await request.form
    if not csrf_ok(form.get("csrf_token")):
        return await render_template("signin.html", error="Please try again.",
                                     csrf=csrf_token()), 403
    app = await app_by_secret(form.get("secret", ""))
    if app is None:
        return await render_template("signin.html", error="That secret is not right.",
                                     csrf=csrf_token()), 401
    sign_in(app)
    return redirect(_local_path(request.args.get("next")) or url_for("views.playground"))


@blueprint.post("/signout")
async def signout() -> WerkzeugResponse | Response:
    form = await request.form
    if csrf_ok(form.get("csrf_token")):
        session.clear()
    return redirect(url_for("views.playground"))
