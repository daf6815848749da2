"""The WebSocket routes: handshake checks, then a read loop turning frames into node calls.

Refusals are accepted at the WebSocket level, sent one fatal frame and closed with a 4xxx code,
so a browser can read why. Outgoing frames go only through the member's queue (app/member.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import Any, cast

from marshmallow import ValidationError
from quart import Blueprint, current_app, websocket

from app.auth import verify_token
from app.broker.base import BrokerError, PresenceMember
from app.errors import UNDELIVERED, ClientError, CloseCode, ErrorCode, NotStored, Refusal
from app.limits import TokenBucket
from app.member import ASGISend, Member, MemberState, Outgoing
from app.node import Node
from app.protocol import (
    PONG,
    Command,
    Dialect,
    Frame,
    Ping,
    Publish,
    Relay,
    RelayBinary,
    Search,
    Status,
    data_from_text,
    error_frame,
    fatal_frame,
    member_list_frame,
    parse_c8,
    parse_piesocket,
    recovered_frame,
    reply_frame,
    status_frame,
    welcome_frame,
)
from app.records import Record, new_client_id
from app.schemas import CHANNEL_PATTERN, first_error, load_connect_params
from app.wire import direct_socket

log = logging.getLogger(__name__)
blueprint = Blueprint("ws", __name__)
RAW_SEND = "c8ws.send"
REFUSAL_LINGER = 2.0  # seconds a refused connection may take to answer our close
MAX_PIPELINED = 256  # persistent publishes of one member waiting for their commit


def current_node() -> Node:
    return cast(Node, current_app.extensions["c8ws.node"])


@blueprint.websocket("/v3", defaults={"channel": ""})
@blueprint.websocket("/v3/", defaults={"channel": ""})
@blueprint.websocket("/v3/<path:channel>")
async def piesocket_route(channel: str) -> None:
    await serve(Dialect.PIESOCKET, channel)


@blueprint.websocket("/c8", defaults={"channel": ""})
@blueprint.websocket("/c8/", defaults={"channel": ""})
@blueprint.websocket("/c8/<path:channel>")
async def c8_route(channel: str) -> None:
    await serve(Dialect.C8, channel)


async def admit(node: Node, dialect: Dialect, channel: str) -> tuple[Member, dict[str, Any]]:
    """Run the handshake checks and build the member; raises `Refusal`."""
    try:
        params = load_connect_params(websocket.args.to_dict())
    except ValidationError as error:
        raise Refusal(CloseCode.POLICY, f"invalid parameter {first_error(error)}") from None
    if not params["api_key"]:
        raise Refusal(CloseCode.UNKNOWN_KEY, "Missing api_key.")
    app = await node.app_by_key(params["api_key"])
    if app is None:
        raise Refusal(CloseCode.UNKNOWN_KEY, "Unknown api key.")
    if not CHANNEL_PATTERN.fullmatch(channel):
        raise Refusal(
            CloseCode.BAD_CHANNEL,
            "Invalid channel id: use 1 to 64 letters, digits, '_' or '-'.",
        )
    limits = node.limits(app)
    origin = websocket.headers.get("Origin")
    if limits.allowed_origins and origin is not None and origin not in limits.allowed_origins:
        raise Refusal(CloseCode.ORIGIN, "Origin not allowed for this app.")
    identity = verify_token(params["jwt"] or websocket.headers.get("jwt"), app.secret, channel)
    client_id = params["client_id"] or new_client_id()
    member = Member(
        local_id=node.next_member_id(),
        dialect=dialect,
        key=(app.id, channel),
        client_id=client_id,
        uuid=params["uuid"] or client_id,
        user=identity.user or params["user"],
        username=identity.username,
        notify_self=params["notify_self"],
        persistent=params["persistent"],
        presence=params["presence"],
        origin=origin,
        remote=websocket.remote_addr,
        limits=limits,
        bucket=TokenBucket(limits.msg_rate, limits.msg_burst),
        flusher=node.hub.flusher,
    )
    node.admit(member, limits)
    return member, params


async def refuse(refusal: Refusal) -> None:
    """Accept, send the fatal frame, close with the code; then wait for the peer's close, or a
    browser may see the connection drop (1006) before it reads our close code."""
    await websocket.accept()
    await websocket.send(fatal_frame(refusal.message))
    await websocket.close(int(refusal.close_code), refusal.message[:120])
    await discard_until_disconnect(REFUSAL_LINGER)


async def serve(dialect: Dialect, channel: str) -> None:
    node = current_node()
    if node.draining.is_set():  # come as the server stops: let in, it would be cut off (1011)
        await websocket.accept()
        await websocket.close(CloseCode.GOING_AWAY, "server shutting down")
        await discard_until_disconnect(REFUSAL_LINGER)
        return
    try:
        member, params = await admit(node, dialect, channel)
    except Refusal as refusal:
        await refuse(refusal)
        return
    try:
        connections, roster = await node.join(member)
    except BrokerError as error:
        await node.leave(member)  # uncount it; a broker failure is not the client's fault
        log.warning("join of %s failed: %s", member.key, error)
        await refuse(Refusal(CloseCode.TRY_AGAIN_LATER,
                             "The server cannot reach its broker; try again in a moment."))
        return
    except BaseException:
        await node.leave(member)
        raise
    writer: asyncio.Task[None] | None = None
    try:
        await queue_first_frames(node, member, connections, roster, params["since"],
                                 params["epoch"])
        await websocket.accept()
        send = cast(ASGISend, cast(dict[str, Any], websocket.scope)[RAW_SEND])
        member.attach(direct_socket(send, node.settings.shutdown_timeout))
        writer = asyncio.create_task(member.run_writer(send, websocket.close))
        member.answer_stored = partial(_answer_stored, member, None, None)
        await read_loop(node, member)
        await writer
        await discard_until_disconnect(node.settings.shutdown_timeout)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("connection to %s failed", member.key)
        member.close(CloseCode.INTERNAL, "internal error")
        if writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, node.settings.shutdown_timeout)
    finally:
        member.mark_gone()
        member.answer_stored = None  # it refers to the member: freed now, not by a full GC pass
        if writer is not None and not writer.done():
            writer.cancel()
        await node.leave(member)


async def queue_first_frames(
    node: Node, member: Member, connections: int, roster: list[PresenceMember],
    since: int | None, epoch: str | None,
) -> None:
    """The welcome (c8), then on a resume every record after `since` and a `recovered` frame,
    all ahead of live records, which are de-duplicated against them. A gap whose frames fill
    more than half the member's queue is not filled: live records arriving while they drain
    would overflow it (4008), and the member would come back for the same gap."""
    frames: list[Outgoing] = []
    c8 = member.dialect is Dialect.C8
    if c8:
        channel_epoch, seq = await node.position(member.key)
        frames.append(Outgoing(welcome_frame(
            member.client_id, member.key[1], channel_epoch, seq, connections,
            member.limits.max_frame_bytes, member.bucket)))
        member.connections_told = connections
    if member.presence and not c8:
        frames.append(Outgoing(member_list_frame([m.public() for m in roster])))
    after = 0
    if since is not None:
        records = await node.recover(member.key, since, epoch)
        missed = [Outgoing(frame, record.seq) for record in records or ()
                  if (frame := record.for_dialect(member.dialect)) is not None]
        if sum(item.size for item in missed) > member.limits.max_queue_bytes // 2:
            records, missed = None, []
        if records is not None:
            after = max(since, records[-1].seq if records else since)
            frames += missed
        if c8:
            count = 0 if records is None else len(records)
            frames.append(Outgoing(recovered_frame(records is not None, count)))
    if frames:
        member.send_first(frames, after)


async def read_loop(node: Node, member: Member) -> None:
    """Handle the member's frames until it closes or is closed."""
    parse = parse_c8 if member.dialect is Dialect.C8 else parse_piesocket
    limit = member.limits.max_frame_bytes
    bucket = member.bucket
    while member.state is MemberState.OPEN:
        received = await websocket.receive()
        frame: Frame = b"" if received is None else received  # Quart: empty binary is None
        member.messages_in += 1
        node.stats.messages_in += 1
        if len(frame) > limit // 4 and _size(frame) > limit:
            member.send_frame(fatal_frame(f"Message too large: the limit is {limit} bytes."))
            member.close(CloseCode.TOO_LARGE, "message too large")
            return
        if not bucket.take():
            # Answered once per streak, so a flood is not answered in kind; but a request with a
            # rid always is, or its sender (a widget's search) would wait for an answer.
            if bucket.refused != 1 and bucket.refused >= bucket.burst:
                member.close(CloseCode.RATE_LIMITED, "rate limit exceeded")
                return
            rid = request_id(frame) if member.dialect is Dialect.C8 else None
            if bucket.refused == 1 or rid is not None:
                member.send_frame(error_frame(
                    member.dialect, ErrorCode.RATE_LIMITED,
                    f"Too many messages: {bucket.rate:g}/s, bursts of {bucket.burst:g}.", rid))
            continue
        try:
            await handle(node, member, parse(frame))
        except ClientError as error:
            member.send_frame(error_frame(member.dialect, error.code, error.message, error.rid))


async def discard_until_disconnect(timeout: float) -> None:
    """After our close frame, keep reading (and dropping) until the peer's close arrives: the
    server stops reading the socket once nobody consumes, and would never see the peer's reply
    behind a backlog of frames (a flooder's, say)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                await websocket.receive()


def request_id(frame: Frame) -> str | None:
    """The rid of a c8 request (publish or search), if the frame is one and has one."""
    try:
        command = parse_c8(frame)
    except ClientError as error:
        return error.rid
    return command.rid if isinstance(command, Publish | Search) else None


def _size(frame: Frame) -> int:
    return len(frame) if isinstance(frame, bytes) else len(frame.encode())


async def handle(node: Node, member: Member, command: Command) -> None:
    """Carry out one command for a member."""
    if isinstance(command, Relay):
        await _publish(node, member, None, data=data_from_text(command.text), text=command.text)
    elif isinstance(command, Publish):
        await _publish(node, member, command.rid, data=command.data)
    elif isinstance(command, RelayBinary):
        await _publish(node, member, None, data=None, binary=command.data)
    elif isinstance(command, Ping):
        member.send_frame(PONG)
    elif isinstance(command, Status):
        member.send_frame(status_frame(await node.count(member.key)))
    elif isinstance(command, Search):
        await member.in_flight.wait_until(0)  # the member's own publishes being stored first
        try:
            result = await node.search(member.key, command.query)
        except ClientError as error:
            raise ClientError(error.code, error.message, command.rid) from None
        member.send_frame(reply_frame(command.rid, result))


async def _publish(node: Node, member: Member, rid: str | None, **message: Any) -> None:
    """Publish for a member. A persistent publish is not waited for: the member's next frames
    join the same group commit, and the node answers each publish (in order) once stored and
    published, with at most MAX_PIPELINED in flight."""
    try:
        record = await node.stamp(member.key, client_id=member.client_id,
                                  username=member.username, persistent=member.persistent,
                                  sender=member, **message)
        if not record.persistent:
            await node.dispatch(record)
            _answer(member, rid, record, None)
            return
    except BrokerError as error:
        _answer(member, rid, None, error)
        return
    answer = member.answer_stored
    if rid is not None or answer is None:
        answer = partial(_answer_stored, member, rid, record)
    node.store_then_publish(record, answer)
    in_flight = member.in_flight
    in_flight.started()  # after: answers come from callbacks, never before this returns
    if in_flight.count >= MAX_PIPELINED:
        await in_flight.wait_until(MAX_PIPELINED - 1)


def _answer_stored(member: Member, rid: str | None, record: Record | None,
                   error: BaseException | None) -> None:
    member.in_flight.finished()
    if error is not None or rid is not None:  # most stored publishes want no answer
        _answer(member, rid, record, error)


def _answer(member: Member, rid: str | None, record: Record | None,
            error: BaseException | None) -> None:
    """Tell the sender how its publish went: a reply when it asked (`rid`), else only errors."""
    if isinstance(error, NotStored):
        member.send_frame(error_frame(member.dialect, ErrorCode.NOT_STORED, str(error), rid))
    elif isinstance(error, BrokerError):
        log.warning("publish to %s failed: %s", member.key, error)
        member.send_frame(error_frame(member.dialect, ErrorCode.UNAVAILABLE, UNDELIVERED, rid))
    elif error is not None:  # stored publishes are answered from a callback: nobody else hears
        log.error("publish to %s failed", member.key, exc_info=error)
        member.close(CloseCode.INTERNAL, "internal error")
    elif rid is not None and record is not None:
        member.send_frame(reply_frame(rid, {"record": record.public()}))
