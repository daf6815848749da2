"""HTTP JSON routes. Errors are `{"error":{"code","message"}}` with a 4xx status."""

from __future__ import annotations

import re
from typing import Any

import orjson
from marshmallow import ValidationError
from quart import Blueprint, Response, current_app, request

from app.access import HTTPError, app_from_key, app_from_secret, current_node
from app.auth import sign_token
from app.errors import ClientError, ErrorCode
from app.protocol import client_json
from app.schemas import CHANNEL_PATTERN, AuthRequest, WidgetBody, first_error
from app.store.base import Widget
from app.widgets import find_widget, list_widgets, source

blueprint = Blueprint("api", __name__)
WIDGET_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


@blueprint.app_errorhandler(HTTPError)
async def http_error(error: HTTPError) -> Response:
    return json_response({"error": {"code": error.code, "message": error.message}}, error.status)


@blueprint.app_errorhandler(404)
async def not_found(_error: Exception) -> Response:
    return await http_error(HTTPError(404, ErrorCode.NOT_FOUND, "no such page"))


@blueprint.app_errorhandler(405)
async def method_not_allowed(_error: Exception) -> Response:
    return await http_error(HTTPError(405, ErrorCode.METHOD_NOT_ALLOWED,
                                      "that method is not allowed here"))


@blueprint.app_errorhandler(413)
async def body_too_large(_error: Exception) -> Response:
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    return await http_error(HTTPError(413, ErrorCode.TOO_LARGE,
                                      f"request body too large: the limit is {limit} bytes"))


def checked_channel(channel: str) -> str:
    if not CHANNEL_PATTERN.fullmatch(channel):
        raise HTTPError(400, ErrorCode.INVALID_REQUEST,
                        "invalid channel id: use 1 to 64 letters, digits, '_' or '-'")
    return channel


def checked_widget_id(widget_id: str) -> str:
    if not WIDGET_ID.fullmatch(widget_id):
        raise HTTPError(400, ErrorCode.INVALID_REQUEST,
                        "invalid widget id: use 1 to 64 lowercase letters, digits or '-'")
    return widget_id


async def json_body() -> Any:
    raw = await request.get_data()
    try:
        return client_json(raw)
    except orjson.JSONDecodeError:
        raise HTTPError(400, ErrorCode.INVALID_JSON, "request body is not valid JSON") from None
    except ClientError as error:
        raise HTTPError(400, error.code, error.message) from None


def validated(schema: Any, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise HTTPError(400, ErrorCode.INVALID_REQUEST, "the body must be a JSON object")
    try:
        loaded: dict[str, Any] = schema.load(body)
    except ValidationError as error:
        raise HTTPError(400, ErrorCode.INVALID_REQUEST, first_error(error)) from None
    return loaded


@blueprint.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@blueprint.post("/api/channels/<path:channel>/search")
async def search(channel: str) -> Response:
    app = await app_from_key()
    key = (app.id, checked_channel(channel))
    query = await json_body()
    try:
        result = await current_node().search(key, query)
    except ClientError as error:
        raise HTTPError(400, error.code, error.message) from None
    return json_response(result)


@blueprint.post("/broadcasting/auth")
async def broadcasting_auth() -> Response:
    """Sign a user token: for the demo app, for anybody (PieSocket's SDK posts `channel_name`);
    for the app another `X-Api-Key` names, for its owner only (the playground of a signed-in
    app, whose viewers connect with that app's key)."""
    form = await request.form
    body = dict(form) if form else await json_body()
    fields = validated(AuthRequest(), body)
    demo = await current_node().store.app_by_name("demo")
    key = request.headers.get("X-Api-Key")
    if key and (demo is None or key != demo.key):
        app = await app_from_secret()
        if app.key != key:
            raise HTTPError(403, ErrorCode.FORBIDDEN, "that api key is not the signed-in app's")
    elif demo is None:
        raise HTTPError(404, ErrorCode.NOT_FOUND, "there is no demo app")
    else:
        app = demo
    token = sign_token(app.secret, fields["channel_name"], fields["username"])
    return json_response({"auth": token})


@blueprint.get("/api/widgets")
async def widgets() -> Response:
    app = await app_from_key()
    return json_response({"widgets": await list_widgets(current_node().store, app.id)})


@blueprint.get("/api/widgets/<widget_id>")
async def widget(widget_id: str) -> Response:
    app = await app_from_key()
    found = await find_widget(current_node().store, app.id, checked_widget_id(widget_id))
    if found is None:
        raise HTTPError(404, ErrorCode.NOT_FOUND, f"no widget {widget_id!r}")
    return json_response(source(*found))


@blueprint.put("/api/widgets/<widget_id>")
async def save_widget(widget_id: str) -> Response:
    app = await app_from_secret()
    fields = validated(WidgetBody(), await json_body())
    saved = await current_node().store.save_widget(
        app.id, Widget(id=checked_widget_id(widget_id), **fields))
    return json_response(source(saved, False))


@blueprint.delete("/api/widgets/<widget_id>")
async def delete_widget(widget_id: str) -> Response:
    app = await app_from_secret()
    if not await current_node().store.delete_widget(app.id, checked_widget_id(widget_id)):
        raise HTTPError(404, ErrorCode.NOT_FOUND, f"no saved widget {widget_id!r}")
    return json_response({"deleted": widget_id})
