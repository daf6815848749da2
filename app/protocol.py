"""Sans-I/O wire protocol: inbound frames -> typed commands; records and events -> encoded frames.

Nothing here awaits or touches a socket, so both dialects are tested by feeding strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import orjson
from marshmallow import ValidationError

from app.errors import ClientError, ErrorCode
from app.limits import TokenBucket
from app.records import Record
from app.schemas import C8_FRAME_SCHEMAS, first_error

Frame = str | bytes


class Dialect(StrEnum):
    C8 = "c8"
    PIESOCKET = "piesocket"


@dataclass(frozen=True, slots=True)
class Ping:
    """`cmd_ping`: answer `{"system":"pong"}` to the sender."""


@dataclass(frozen=True, slots=True)
class Status:
    """`cmd_status`: answer the channel's connection count to the sender."""


@dataclass(frozen=True, slots=True)
class Relay:
    """A piesocket text frame to relay verbatim (and store, on a persistent connection)."""

    text: str


@dataclass(frozen=True, slots=True)
class RelayBinary:
    """A binary frame: relayed as binary, never stored."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Publish:
    """A c8 publish; with `rid` the sender gets a reply carrying the record."""

    data: Any
    rid: str | None


@dataclass(frozen=True, slots=True)
class Search:
    """A c8 search; `query` is the raw QUERY, validated by the search pipeline."""

    rid: str | None
    query: Any


Command = Ping | Status | Relay | RelayBinary | Publish | Search

PONG = '{"system":"pong"}'
COMMANDS: dict[str, Command] = {"cmd_ping": Ping(), "cmd_status": Status()}


def _command(text: str) -> Command:
    command = COMMANDS.get(text)
    if command is None:
        name = text[:40]
        raise ClientError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {name!r}")
    return command


MAX_JSON_DEPTH = 128
"""How deep the JSON a client sends may nest. What the server sends back wraps it a few levels
deeper, and orjson encodes at most ENCODABLE_DEPTH levels (it parses 1,024): deeper data, once
accepted, could be delivered to nobody and stored nowhere."""

ENCODABLE_DEPTH = 254
"""The deepest nesting orjson encodes (`orjson.dumps` refuses 255 levels)."""

ORJSON_TOO_DEEP = "depth limit exceeded"
"""How orjson's parse error begins for text nested deeper than it parses."""


def parse_piesocket(frame: Frame) -> Command:
    """A piesocket frame: `cmd_…` commands are answered, everything else is relayed."""
    if isinstance(frame, bytes):
        return RelayBinary(frame)
    if frame.startswith("cmd_"):
        return _command(frame)
    return Relay(frame)


def parse_c8(frame: Frame) -> Command:
    """A c8 frame: a JSON object with one known top-level key, or the raw text of a command."""
    if isinstance(frame, bytes):
        raise ClientError(ErrorCode.INVALID_JSON, "binary frames are not accepted on /c8")
    if frame.startswith("cmd_"):
        return _command(frame)
    try:
        value = client_json(frame, nesting=False)  # checked below, once the rid is known
    except orjson.JSONDecodeError:
        raise ClientError(ErrorCode.INVALID_JSON, "frame is not valid JSON") from None
    if not isinstance(value, dict) or len(value) != 1:
        raise ClientError(
            ErrorCode.INVALID_JSON, "frame must be a JSON object with exactly one key"
        )
    ((kind, body),) = value.items()
    schema = C8_FRAME_SCHEMAS.get(kind)
    if schema is None:
        raise ClientError(ErrorCode.UNKNOWN_COMMAND, f"unknown frame kind {kind[:40]!r}")
    if not isinstance(body, dict):
        raise ClientError(ErrorCode.INVALID_JSON, f"{kind!r} must be a JSON object")
    rid = body.get("rid") if isinstance(body.get("rid"), str) else None
    check_nesting(frame, value, rid)
    try:
        fields = schema.load(body)
    except ValidationError as error:
        code = ErrorCode.INVALID_QUERY if kind == "search" else ErrorCode.INVALID_JSON
        raise ClientError(code, f"{kind}: {first_error(error)}", rid) from None
    if kind == "publish":
        return Publish(fields.get("data"), fields.get("rid"))
    return Search(fields.get("rid"), fields["query"])


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def piesocket_frame(record: Record) -> Frame:
    """What piesocket members receive: the original text, or the c8 data as text."""
    if record.binary is not None:
        return record.binary
    if record.text is not None:
        return record.text
    return text_of(record.data)


def text_of(data: Any, encoded: str | None = None) -> str:
    """The piesocket frame of `data` that came without a frame of its own (a c8 publish): a
    string as it is, anything else as JSON (`encoded`, when the caller has made it already)."""
    if isinstance(data, str):
        return data
    return _json(data) if encoded is None else encoded


def c8_message_frame(record: Record) -> str | None:
    """What c8 members receive: `{"message":RECORD}`; binary frames have no c8 form."""
    if record.binary is not None:
        return None
    return _json({"message": record.public()})


class RecordFrames(NamedTuple):
    """A record encoded once for each dialect."""

    seq: int
    piesocket: Frame
    c8: str | None  # binary frames have no c8 form

    def for_dialect(self, dialect: Dialect) -> Frame | None:
        return self.piesocket if dialect is Dialect.PIESOCKET else self.c8


def encode_record(record: Record) -> RecordFrames:
    return RecordFrames(record.seq, piesocket_frame(record), c8_message_frame(record))


def data_from_text(text: str) -> Any:
    """Bridging: a piesocket frame's data is its JSON value, or the string itself."""
    try:
        return client_json(text)
    except orjson.JSONDecodeError:
        return text


def client_json(text: str | bytes, *, nesting: bool = True) -> Any:
    """A client's JSON text as a value, or orjson.JSONDecodeError when it is not JSON. JSON
    nested deeper than orjson parses (1,024 levels) is refused like JSON nested past
    MAX_JSON_DEPTH, not taken for text that is not JSON; `nesting=False` leaves the check of
    the shallower levels to the caller (a c8 frame's, once its rid is known)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        if str(error).startswith(ORJSON_TOO_DEEP):
            raise _nested_too_deep(None) from None
        raise
    if nesting:
        check_nesting(text, value)
    return value


def check_nesting(text: str | bytes, value: Any, rid: str | None = None) -> None:
    """Refuse JSON from a client that nests deeper than MAX_JSON_DEPTH (`invalid_json`, with the
    request's `rid`). Text too short, or with too few brackets, to nest that deep is let through
    at once; otherwise orjson, which encodes at most ENCODABLE_DEPTH levels, tries the value
    wrapped in as many lists as that leaves over the limit (in C, far faster than a walk)."""
    if len(text) <= 2 * MAX_JSON_DEPTH:
        return
    brackets = (text.count(b"[") + text.count(b"{") if isinstance(text, bytes)
                else text.count("[") + text.count("{"))
    if brackets <= MAX_JSON_DEPTH:
        return
    wrapped = value
    for _ in range(ENCODABLE_DEPTH - MAX_JSON_DEPTH):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError:
        raise _nested_too_deep(rid) from None


def _nested_too_deep(rid: str | None) -> ClientError:
    return ClientError(ErrorCode.INVALID_JSON,
                       f"JSON nested more than {MAX_JSON_DEPTH} levels deep", rid)


def status_frame(connections: int) -> str:
    return f'{{"system":{{"connection_count":{connections:d}}}}}'


def fatal_frame(message: str) -> str:
    return _json({"error": message})


def error_frame(dialect: Dialect, code: str, message: str, rid: str | None = None) -> str:
    """A non-fatal error in the member's dialect."""
    if dialect is Dialect.PIESOCKET:
        return _json({"system": {"error": {"code": code, "message": message}}})
    body: dict[str, Any] = {"code": code, "message": message}
    if rid is not None:
        body["rid"] = rid
    return _json({"error": body})


def welcome_frame(client_id: str, channel: str, epoch: str, seq: int, connections: int,
                  max_frame_bytes: int, bucket: TokenBucket) -> str:
    """The c8 welcome, with the limits a client paces itself by: the connection's own bucket's
    (the shim sends no faster than `msg_rate` a second after a burst of `msg_burst`, so what it
    queued is not dropped)."""
    rate = bucket.rate
    return _json(
        {"welcome": {"client_id": client_id, "channel": channel, "epoch": epoch, "seq": seq,
                     "connections": connections, "max_frame_bytes": max_frame_bytes,
                     "msg_rate": int(rate) if rate == int(rate) else rate,
                     "msg_burst": int(bucket.burst)}}
    )


def member_list_frame(members: list[dict[str, Any]]) -> str:
    return _json({"event": "system:member_list", "data": {"members": members}})


def member_event_frame(event: str, member: dict[str, Any], members: list[dict[str, Any]]) -> str:
    """`system:member_joined` / `system:member_left` with the full roster."""
    return _json({"event": f"system:{event}", "data": {"member": member, "members": members}})


def connections_frame(connections: int) -> str:
    return f'{{"connections":{connections:d}}}'


def reply_frame(rid: str | None, body: dict[str, Any]) -> str:
    """The answer to a request: `{"reply":{"rid":…, …body}}`."""
    return _json({"reply": {"rid": rid, **body}})


def recovered_frame(ok: bool, count: int = 0) -> str:
    return _json({"recovered": {"ok": True, "count": count} if ok else {"ok": False}})
