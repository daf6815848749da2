"""One exception tree and the wire's stable codes.

    C8wsError
    ├── ConfigError      a setting is invalid; start-up stops with its message
    ├── Refusal          a connection is refused: fatal frame, then a 4xxx close
    ├── ClientError      bad client input: a non-fatal error frame, the connection stays open
    │   └── QueryError   a search QUERY is invalid (code `invalid_query`)
    └── StoreError       the store could not do what was asked
        └── NotStored    a persistent record could not be committed (code `not_stored`)
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes we send; each comment says what the client should do."""

    GOING_AWAY = 1001  # server shutting down: reconnect with `since`
    POLICY = 1008  # a connection parameter is malformed: fix it, do not reconnect as is
    INTERNAL = 1011  # internal error, logged with a trace: reconnect with `since`
    TRY_AGAIN_LATER = 1013  # the broker could not be reached while joining: back off, reconnect
    OPERATOR = 4000  # disconnected by an operator: reconnect if you like
    UNKNOWN_KEY = 4001  # terminal: missing or unknown api key
    BAD_CHANNEL = 4002  # terminal: invalid channel id
    AUTH_FAILED = 4003  # terminal: JWT missing, invalid, expired or for another channel
    ORIGIN = 4004  # terminal: origin not allowed for this app
    TOO_SLOW = 4008  # reconnect with `since`: the outgoing queue overflowed
    TOO_LARGE = 4009  # terminal for that message: over the frame size limit
    RATE_LIMITED = 4029  # back off, then reconnect




class ErrorCode:
    """Stable strings carried by non-fatal error frames and HTTP error bodies."""

    INVALID_JSON = "invalid_json"
    INVALID_QUERY = "invalid_query"
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_COMMAND = "unknown_command"
    RATE_LIMITED = "rate_limited"
    TOO_LARGE = "too_large"
    NOT_STORED = "not_stored"
    UNAVAILABLE = "unavailable"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNAUTHORIZED = "unauthorized"


UNDELIVERED = "the message could not be delivered (the broker is unreachable); try again"
"""The message of an `unavailable` publish, over the socket and over HTTP."""


class C8wsError(Exception):
    """Base of every error this server raises on purpose."""


class ConfigError(C8wsError):
    """A setting is invalid; the message names it."""


class Refusal(C8wsError):
    """A connection is refused: the client gets `{"error": message}` and then `close_code`."""

    def __init__(self, close_code: CloseCode, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.message = message


class ClientError(C8wsError):
    """Bad client input, answered with a non-fatal error frame carrying `code` (and `rid`)."""

    def __init__(self, code: str, message: str, rid: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.rid = rid


class QueryError(ClientError):
    """A search QUERY is invalid; the message names the field or key at fault."""

    def __init__(self, message: str, rid: str | None = None) -> None:
        super().__init__(ErrorCode.INVALID_QUERY, message, rid)


class StoreError(C8wsError):
    """The store could not do what was asked."""


class NotStored(StoreError):
    """A persistent record could not be committed, so it was not delivered either."""
