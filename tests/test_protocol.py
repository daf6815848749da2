"""The sans-I/O protocol: frames in, commands out; records out, frames in each dialect."""

from __future__ import annotations

import orjson
import pytest

from app.errors import ClientError, QueryError
from app.protocol import (
    PONG,
    Dialect,
    Ping,
    Publish,
    Relay,
    RelayBinary,
    Search,
    Status,
    c8_message_frame,
    data_from_text,
    error_frame,
    parse_c8,
    parse_piesocket,
    piesocket_frame,
    status_frame,
)
from app.query import validate_query
from app.records import Record


def record(**fields: object) -> Record:
    base: dict[str, object] = dict(app="demo", channel="c", seq=3, id="i", client_id="cl",
                                   created=1678724096803, data=None)
    return Record(**{**base, **fields})  # type: ignore[arg-type]


def test_piesocket_commands_and_relays() -> None:
    """cmd_ping/cmd_status are commands; other text relays; binary relays as binary."""
    assert parse_piesocket("cmd_ping") == Ping()
    assert parse_piesocket("cmd_status") == Status()
    assert parse_piesocket("hello") == Relay("hello")
    assert parse_piesocket(" cmd_ping") == Relay(" cmd_ping")
    assert parse_piesocket(b"\x00") == RelayBinary(b"\x00")


def test_unknown_piesocket_command_is_a_client_error() -> None:
    """An unknown cmd_ is answered, not relayed."""
    with pytest.raises(ClientError) as caught:
        parse_piesocket("cmd_reboot")
    assert caught.value.code == "unknown_command"


def test_c8_frames() -> None:
    """publish and search parse into commands carrying their rid."""
    assert parse_c8('{"publish":{"data":{"a":1},"rid":"r"}}') == Publish({"a": 1}, "r")
    assert parse_c8('{"publish":{"data":null}}') == Publish(None, None)
    assert parse_c8('{"search":{"rid":"s","query":{}}}') == Search("s", {})
    assert parse_c8("cmd_status") == Status()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1,2]", "invalid_json"),
        ('{"publish":{"data":1},"search":{}}', "invalid_json"),
        ('{"launch":{}}', "unknown_command"),
        ('{"publish":{"data":1,"extra":true}}', "invalid_json"),
        ('{"publish":{}}', "invalid_json"),
        ('{"publish":5}', "invalid_json"),
        ('{"search":{"rid":"r"}}', "invalid_query"),
        (b"\x01", "invalid_json"),
    ],
)
def test_bad_c8_frames_are_client_errors(frame: str | bytes, code: str) -> None:
    """Every malformed frame names what is wrong with a stable code."""
    with pytest.raises(ClientError) as caught:
        parse_c8(frame)
    assert caught.value.code == code
    assert caught.value.message


def test_rejected_frame_keeps_its_rid() -> None:
    """A frame that fails validation is answered with its own rid."""
    with pytest.raises(ClientError) as caught:
        parse_c8('{"publish":{"rid":"r9"}}')
    assert caught.value.rid == "r9"


def test_bridging_text_both_ways() -> None:
    """Text round-trips unchanged; JSON text becomes data; c8 data becomes JSON text."""
    assert data_from_text('{"a":1}') == {"a": 1}
    assert data_from_text("plain") == "plain"
    assert piesocket_frame(record(text='{"a": 1}', data={"a": 1})) == '{"a": 1}'
    assert piesocket_frame(record(data="bare string")) == "bare string"
    assert piesocket_frame(record(data={"b": [1, True]})) == '{"b":[1,true]}'
    assert piesocket_frame(record(binary=b"\x01")) == b"\x01"
    message = orjson.loads(c8_message_frame(record(data={"x": 1}, username="ann")) or "")
    assert message == {"message": {"id": "i", "client_id": "cl", "created": 1678724096803,
                                   "data": {"x": 1}, "username": "ann", "seq": 3}}
    assert c8_message_frame(record(binary=b"\x01")) is None


def test_system_frames_are_byte_exact() -> None:
    """The PieSocket answers match the hosted service byte for byte."""
    assert PONG == '{"system":"pong"}'
    assert status_frame(12) == '{"system":{"connection_count":12}}'


def test_error_frames_per_dialect() -> None:
    """piesocket errors sit under system; c8 errors carry the rid when there is one."""
    assert orjson.loads(error_frame(Dialect.PIESOCKET, "rate_limited", "slow down")) == {
        "system": {"error": {"code": "rate_limited", "message": "slow down"}}}
    assert orjson.loads(error_frame(Dialect.C8, "invalid_json", "bad", "r1")) == {
        "error": {"code": "invalid_json", "message": "bad", "rid": "r1"}}


@pytest.mark.parametrize("query", ["null", "[1]", '"x"', "5"])
def test_a_query_that_is_no_object_is_named_as_such(query: str) -> None:
    """A null QUERY is refused like any other non-object (it was "Field may not be null.")."""
    search = parse_c8('{"search":{"rid":"r","query":' + query + "}}")
    assert isinstance(search, Search)
    with pytest.raises(QueryError) as caught:
        validate_query(search.query)
    assert caught.value.message == "QUERY must be a JSON object"
