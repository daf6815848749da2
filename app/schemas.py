"""Marshmallow schemas for every input that crosses a boundary: connection parameters, c8 frames,
the search QUERY and HTTP bodies. Unknown keys are rejected (except in query strings, where
PieSocket SDKs add their own), and each error names the field at fault.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates_schema,
)

CHANNEL_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FIELD_PATTERN = re.compile(r"(id|seq|created|client_id|username|data(\.[A-Za-z0-9_]+)*)")
TOKEN_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"

INT64_MAX = 2**63 - 1
INT64 = validate.Range(min=-(2**63), max=INT64_MAX)
"""What a stored integer can be: anything larger fails in the store, not here."""
MAX_LIMIT = 1000
MAX_OFFSET = 10_000_000
MAX_FILTERS = 20
MAX_IN_VALUES = 100
OPERATORS = ("=", "!=", ">", ">=", "<", "<=", "in", "nin", "contains", "exists")


def first_error(error: ValidationError) -> str:
    """One readable sentence naming the first field at fault, e.g. `filters.0.field: …`."""

    def walk(messages: Any, path: list[str]) -> str:
        if isinstance(messages, dict):
            key, value = next(iter(messages.items()))
            return walk(value, [*path, str(key)])
        if isinstance(messages, list) and messages:
            return walk(messages[0], path)
        prefix = ".".join(p for p in path if p != "_schema")
        return f"{prefix}: {messages}" if prefix else str(messages)

    return walk(error.messages, [])


class Flag(fields.Field):  # type: ignore[type-arg]
    """A query-string boolean: bare key, `1`, `true` are on; `0`, `false` are off."""

    TRUE = frozenset({"", "1", "true"})
    FALSE = frozenset({"0", "false"})

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        text = str(value).lower()
        if text in self.TRUE:
            return True
        if text in self.FALSE:
            return False
        raise ValidationError("must be one of 1, true, 0, false (or the bare key)")


class ConnectParams(Schema):
    """The query string of `/v3/{channel}` and `/c8/{channel}`."""

    class Meta:
        unknown = EXCLUDE

    api_key = fields.String(load_default=None)
    apiKey = fields.String(load_default=None)
    notify_self = Flag(load_default=False)
    persistent = Flag(load_default=False)
    presence = Flag(load_default=False)
    user = fields.String(load_default=None, validate=validate.Length(max=128))
    uuid = fields.String(load_default=None, validate=validate.Regexp(TOKEN_PATTERN))
    jwt = fields.String(load_default=None)
    client_id = fields.String(load_default=None, validate=validate.Regexp(TOKEN_PATTERN))
    since = fields.Integer(load_default=None, validate=validate.Range(min=0, max=INT64_MAX))
    epoch = fields.String(load_default=None, validate=validate.Length(max=64))


def load_connect_params(args: Mapping[str, str]) -> dict[str, Any]:
    """Validated connection parameters; `api_key` merged from `apiKey`."""
    params: dict[str, Any] = ConnectParams().load(dict(args))
    params["api_key"] = params.pop("api_key") or params.pop("apiKey")
    params.pop("apiKey", None)
    return params


class FieldPath(fields.String):
    """A record field or `data.<path>`; anything else is refused, naming it."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if len(text) > 256 or not FIELD_PATTERN.fullmatch(text):
            raise ValidationError(
                f"unknown field {text[:64]!r}: use id, seq, created, client_id, username, data "
                "or data.<path> with segments of letters, digits and _"
            )
        return text


class StrictInteger(fields.Integer):
    """An integer that is really an integer: no strings, floats or booleans."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return int(super()._validated(value))


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


class FilterSchema(Schema):
    class Meta:
        unknown = RAISE

    field = FieldPath(required=True)
    operator = fields.String(required=True, validate=validate.OneOf(OPERATORS))
    value = fields.Raw(required=True, allow_none=True)

    @validates_schema
    def check_value(self, data: dict[str, Any], **kwargs: Any) -> None:
        operator, value = data["operator"], data["value"]
        if operator in ("in", "nin"):
            if not isinstance(value, list) or len(value) > MAX_IN_VALUES:
                raise ValidationError(
                    f"{operator!r} takes a list of at most {MAX_IN_VALUES} values", "value"
                )
            if not all(_is_scalar(item) for item in value):
                raise ValidationError(f"{operator!r} takes a list of scalars", "value")
        elif operator == "exists":
            if not isinstance(value, bool):
                raise ValidationError("'exists' takes true or false", "value")
        elif operator == "contains":
            if not isinstance(value, str):
                raise ValidationError("'contains' takes a string", "value")
        elif operator in ("=", "!="):
            if not _is_scalar(value):
                raise ValidationError(f"{operator!r} takes a string, number, boolean or null",
                                      "value")
        elif not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValidationError(f"{operator!r} takes a string or a number", "value")


class QuerySchema(Schema):
    """The search QUERY of PROTOCOL.md."""

    class Meta:
        unknown = RAISE

    sortField = FieldPath(load_default="created")
    sortOrder = fields.String(load_default="asc", validate=validate.OneOf(("asc", "desc")))
    offset = StrictInteger(load_default=0, validate=validate.Range(min=0, max=MAX_OFFSET))
    limit = StrictInteger(load_default=10, validate=validate.Range(min=1, max=MAX_LIMIT))
    filters = fields.List(
        fields.Nested(FilterSchema), load_default=list,
        validate=validate.Length(max=MAX_FILTERS, error=f"at most {MAX_FILTERS} filters"),
    )
    groupBy = FieldPath(load_default=None)

    @pre_load
    def require_object(self, data: Any, **kwargs: Any) -> Any:
        if not isinstance(data, dict):
            raise ValidationError("QUERY must be a JSON object")
        return data


class PublishFrame(Schema):
    class Meta:
        unknown = RAISE

    data = fields.Raw(required=True, allow_none=True)
    rid = fields.String(load_default=None, validate=validate.Length(max=64))


class SearchFrame(Schema):
    class Meta:
        unknown = RAISE

    query = fields.Raw(required=True, allow_none=True)  # checked as a QUERY, null included
    rid = fields.String(load_default=None, validate=validate.Length(max=64))


C8_FRAME_SCHEMAS: dict[str, Schema] = {"publish": PublishFrame(), "search": SearchFrame()}


class WidgetBody(Schema):
    """PUT /api/widgets/{id}."""

    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    html = fields.String(load_default="", validate=validate.Length(max=200_000))
    css = fields.String(load_default="", validate=validate.Length(max=200_000))
    js = fields.String(load_default="", validate=validate.Length(max=200_000))


class AuthRequest(Schema):
    """POST /broadcasting/auth: PieSocket's SDK sends `channel_name` (and `socket_id`)."""

    class Meta:
        unknown = EXCLUDE

    channel_name = fields.String(required=True, validate=validate.Regexp(CHANNEL_PATTERN))
    username = fields.String(load_default=None, validate=validate.Length(min=1, max=64))


class ChannelId(fields.String):
    """A channel id; a whole number too, as PieSocket's SDKs send one ("a string or number")."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        return super()._deserialize(value, attr, data, **kwargs)


class PublishBody(Schema):
    """POST /api/publish, PieSocket's REST API: `{key, secret, channelId, message}`."""

    class Meta:
        unknown = RAISE

    key = fields.String(required=True)
    secret = fields.String(required=True)
    channelId = ChannelId(required=True, validate=validate.Regexp(CHANNEL_PATTERN))
    message = fields.Raw(required=True, allow_none=True)
    persistent = fields.Boolean(load_default=False)


class ReplayBody(Schema):
    """POST /api/replays: which stretch of which channel, how fast."""

    class Meta:
        unknown = RAISE

    channel = fields.String(required=True, validate=validate.Regexp(CHANNEL_PATTERN))
    start = fields.Integer(load_default=None, strict=True, validate=INT64)  # created, in ms
    end = fields.Integer(load_default=None, strict=True, validate=INT64)
    speed = fields.Raw(load_default=1)

    @validates_schema
    def check_speed(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["speed"] not in (1, 2, 10, "max", "step"):
            raise ValidationError("speed is one of 1, 2, 10, \"max\", \"step\"", "speed")


class SeekBody(Schema):
    class Meta:
        unknown = RAISE

    position = fields.Integer(required=True, strict=True, validate=validate.Range(min=0))
