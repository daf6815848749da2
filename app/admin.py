"""Secret-protected HTTP routes: live channels and members, disconnecting a member, streamed
export, PieSocket's REST publish, and the Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, current_app, request

from app.access import HTTPError, app_from_secret, current_node, secret_matches
from app.api import checked_channel, json_body, json_response, validated
from app.broker.base import BrokerError
from app.errors import UNDELIVERED, ClientError, CloseCode, ErrorCode, NotStored
from app.member import Member
from app.protocol import client_json, data_from_text
from app.query import validate_query
from app.replay import MAX_RECORDS, Replay, Replays
from app.schemas import PublishBody, ReplayBody, SeekBody
from app.transfer import export_header, export_lines

blueprint = Blueprint("admin", __name__)
EVENTS_TICK = 0.5


def describe_member(member: Member) -> dict[str, Any]:
    return {
        "client_id": member.client_id, "dialect": member.dialect.value, "user": member.user,
        "username": member.username, "uuid": member.uuid, "origin": member.origin,
        "remote": member.remote, "connected_at": member.connected_at,
        "messages_in": member.messages_in, "messages_out": member.messages_out,
        "queue_depth": member.queue_depth, "queued_bytes": member.queued_bytes,
        "notify_self": member.notify_self, "persistent": member.persistent,
        "presence": member.presence, "state": member.state.value,
    }


@blueprint.get("/api/channels")
async def channels() -> Response:
    app = await app_from_secret()
    node = current_node()
    found: list[dict[str, Any]] = []
    for key in node.hub.channels():
        if key[0] == app.id:
            found.append({"channel": key[1], "connections": await node.count(key),
                          "members_here": node.hub.count(key)})
    found.sort(key=lambda channel: str(channel["channel"]))
    return json_response({"channels": found})


@blueprint.get("/api/channels/<path:channel>/connections")
async def connections(channel: str) -> Response:
    app = await app_from_secret()
    node = current_node()
    key = (app.id, checked_channel(channel))
    members = [describe_member(m) for m in node.hub.members(key)]
    return json_response({"channel": key[1], "connections": await node.count(key),
                          "members": members})


@blueprint.get("/api/events")
async def events() -> Response:
    """Server-sent events for the connections view: every EVENTS_TICK seconds, the channels
    whose count or message total changed (the first event has them all), aggregated per channel
    so 10,000 members cost a line per channel, not per member."""
    app = await app_from_secret()
    node = current_node()

    async def stream() -> AsyncIterator[bytes]:
        sent: dict[str, tuple[int, int]] = {}
        while not node.draining.is_set():
            now: dict[str, tuple[int, int]] = {}
            for key in node.hub.channels():
                if key[0] == app.id:
                    now[key[1]] = (node.hub.count(key), node.channel_messages[key])
            changed = [{"channel": c, "connections": n, "messages": m}
                       for c, (n, m) in now.items() if sent.get(c) != (n, m)]
            gone = [c for c in sent if c not in now]
            sent = now
            body = {"time": time.time(), "changed": changed, "gone": gone}
            yield b"data: " + orjson.dumps(body) + b"\n\n"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.draining.wait(), EVENTS_TICK)

    response = Response(stream(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.timeout = None
    return response


@blueprint.post("/api/channels/<path:channel>/members/<client_id>/disconnect")
async def disconnect(channel: str, client_id: str) -> Response:
    """Close a member with 4000 "disconnected by an operator"."""
    app = await app_from_secret()
    key = (app.id, checked_channel(channel))
    closed = 0
    for member in current_node().hub.members(key):
        if member.client_id == client_id:
            member.close(CloseCode.OPERATOR, "disconnected by an operator")
            closed += 1
    if not closed:
        raise HTTPError(404, ErrorCode.NOT_FOUND, f"no member {client_id!r} in {channel!r}")
    return json_response({"disconnected": closed})


def export_filters(raw: str | None) -> list[dict[str, Any]]:
    """The `filters` parameter: a JSON list in QUERY's filter syntax, validated like a search."""
    if not raw:
        return []
    try:
        filters = client_json(raw)
        return cast(list[dict[str, Any]], validate_query({"filters": filters})["filters"])
    except orjson.JSONDecodeError:
        raise HTTPError(400, ErrorCode.INVALID_QUERY, "filters must be a JSON list") from None
    except ClientError as error:
        raise HTTPError(400, error.code, error.message) from None


@blueprint.get("/api/channels/<path:channel>/export")
async def export(channel: str) -> Response:
    """Every stored record as NDJSON (default) or CSV, streamed."""
    app = await app_from_secret()
    key = (app.id, checked_channel(channel))
    kind = request.args.get("format", "ndjson")
    if kind not in ("ndjson", "csv"):
        raise HTTPError(400, ErrorCode.INVALID_REQUEST, "format must be ndjson or csv")
    filters = export_filters(request.args.get("filters"))
    store = current_node().store

    async def body() -> AsyncIterator[bytes]:
        if header := export_header(kind):
            yield header.encode()
        async for line in export_lines(store, *key, kind, filters):
            yield line.encode()

    mimetype = "text/csv" if kind == "csv" else "application/x-ndjson"
    response = Response(body(), mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{key[1]}.{kind}"'
    response.timeout = None
    return response


@blueprint.post("/api/publish")
async def publish() -> Response:
    """PieSocket's REST publish: the key names the app, the secret proves it."""
    fields = validated(PublishBody(), await json_body())
    node = current_node()
    app = await node.app_by_key(fields["key"])
    if app is None or not secret_matches(app, fields["secret"]):
        raise HTTPError(401, ErrorCode.UNAUTHORIZED, "unknown key or wrong secret")
    message = fields["message"]
    text = message if isinstance(message, str) else None
    limits = node.limits(app)
    size = len(text.encode()) if text is not None else len(orjson.dumps(message))
    if size > limits.max_frame_bytes:
        raise HTTPError(413, ErrorCode.TOO_LARGE,
                        f"message too large: the limit is {limits.max_frame_bytes} bytes")
    try:
        data = data_from_text(text) if text is not None else message
    except ClientError as error:  # a text that is JSON nested too deep
        raise HTTPError(400, error.code, error.message) from None
    bucket = node.http_bucket(app.id, limits)
    if not bucket.take():
        raise HTTPError(429, ErrorCode.RATE_LIMITED,
                        f"too many messages: {bucket.rate:g}/s, bursts of {bucket.burst:g} for "
                        "the app's REST publishes")
    try:
        record = await node.stamp(
            (app.id, fields["channelId"]), client_id="http-api", text=text, data=data,
            persistent=fields["persistent"])
        await node.dispatch(record)
    except NotStored as error:
        raise HTTPError(503, ErrorCode.NOT_STORED, str(error)) from None
    except BrokerError:
        raise HTTPError(503, ErrorCode.UNAVAILABLE, UNDELIVERED) from None
    return json_response({"success": True, "record": record.public()})


def current_replays() -> Replays:
    return cast(Replays, current_app.extensions["c8ws.replays"])


async def owned_replay(replay_id: str) -> Replay:
    app = await app_from_secret()
    replay = current_replays().get(app.id, replay_id)
    if replay is None:
        raise HTTPError(404, ErrorCode.NOT_FOUND, f"no replay {replay_id!r}")
    return replay


@blueprint.post("/api/replays")
async def start_replay() -> Response:
    """Replay a stretch of a channel into a scratch channel (paused until `play`)."""
    app = await app_from_secret()
    fields = validated(ReplayBody(), await json_body())
    filters = [{"field": "created", "operator": op, "value": fields[name]}
               for name, op in (("start", ">="), ("end", "<=")) if fields[name] is not None]
    records = await current_node().store.read_range(
        app.id, fields["channel"], 0, MAX_RECORDS + 1, filters)
    if len(records) > MAX_RECORDS:
        raise HTTPError(400, ErrorCode.INVALID_REQUEST,
                        f"more than {MAX_RECORDS} records in that range: narrow it")
    speed = {"max": None, "step": 0.0}.get(fields["speed"], fields["speed"])
    replay = await current_replays().start(app.id, fields["channel"], records, speed)
    return json_response(replay.describe(), 201)


@blueprint.get("/api/replays/<replay_id>")
async def replay_status(replay_id: str) -> Response:
    return json_response((await owned_replay(replay_id)).describe())


@blueprint.post("/api/replays/<replay_id>/<action>")
async def control_replay(replay_id: str, action: str) -> Response:
    """play, pause, step, or seek with `{"position": N}`."""
    replay = await owned_replay(replay_id)
    replays = current_replays()
    if action == "play":
        replays.play(replay)
    elif action == "pause":
        replays.pause(replay)
    elif action == "step":
        await replays.step(replay)
    elif action == "seek":
        await replays.seek(replay, validated(SeekBody(), await json_body())["position"])
    else:
        raise HTTPError(404, ErrorCode.NOT_FOUND, f"no replay action {action!r}")
    return json_response(replay.describe())


@blueprint.delete("/api/replays/<replay_id>")
async def stop_replay(replay_id: str) -> Response:
    replay = await owned_replay(replay_id)
    await current_replays().stop(replay)
    return json_response({"stopped": replay.id})


@blueprint.get("/metrics")
async def metrics() -> Response:
    registry = current_app.extensions["c8ws.metrics"]
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
