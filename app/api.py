"""HTTP JSON routes. Errors are `{"error":{"code","message"}}` with a 4xx status."""

from __future__ import annotations

from typing import Any, cast

import orjson
from quart import Blueprint, Response, current_app, request

from app.errors import ClientError, ErrorCode
from app.node import Node
from app.schemas import CHANNEL_PATTERN
from app.store.base import App

blueprint = Blueprint("api", __name__)


class HTTPError(Exception):
    """An HTTP error answer: status, stable code and a sentence."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


@blueprint.app_errorhandler(HTTPError)
async def http_error(error: HTTPError) -> Response:
    return json_response({"error": {"code": error.code, "message": error.message}}, error.status)


def current_node() -> Node:
    return cast(Node, current_app.extensions["c8ws.node"])


async def app_from_key() -> App:
    """The app named by the `X-Api-Key` header or the `api_key` parameter."""
    key = request.headers.get("X-Api-Key") or request.args.get("api_key")
    if not key:
        raise HTTPError(401, ErrorCode.UNAUTHORIZED, "missing api key (X-Api-Key header)")
    app = await current_node().app_by_key(key)
    if app is None:
        raise HTTPError(401, ErrorCode.UNAUTHORIZED, "unknown api key")
    return app


def checked_channel(channel: str) -> str:
    if not CHANNEL_PATTERN.fullmatch(channel):
        raise HTTPError(400, ErrorCode.INVALID_REQUEST,
                        "invalid channel id: use 1 to 64 letters, digits, '_' or '-'")
    return channel


async def json_body() -> Any:
    raw = await request.get_data()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise HTTPError(400, ErrorCode.INVALID_JSON, "request body is not valid JSON") from None


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
