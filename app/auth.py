"""Signed user tokens: HS256 JWTs signed with the app secret. A member's `username` comes from a
verified token and nowhere else."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

from app.errors import CloseCode, Refusal

AUTH_FAILED = "Authentication failed, provide valid jwt token."
PRIVATE_PREFIX = "private-"
TOKEN_TTL = 24 * 3600
MAX_NAME = 128  # characters of a user or username, as for the `user` parameter
CLOCK_LEEWAY = 60  # seconds the signer's clock may differ from ours (`iat`, `exp`, `nbf`)


@dataclass(frozen=True)
class Identity:
    """Who a verified token says the member is."""

    user: str | None
    username: str | None


ANONYMOUS = Identity(None, None)


def verify_token(token: str | None, secret: str, channel: str) -> Identity:
    """The token's identity; refuses with 4003 when a token is bad, or missing on a private
    channel. `sub` must be the channel or `*`, and `exp` in the future."""
    if not token:
        if channel.startswith(PRIVATE_PREFIX):
            raise Refusal(CloseCode.AUTH_FAILED, AUTH_FAILED)
        return ANONYMOUS
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["exp", "sub"]},
            leeway=CLOCK_LEEWAY,
        )
    except jwt.PyJWTError:
        raise Refusal(CloseCode.AUTH_FAILED, AUTH_FAILED) from None
    if claims["sub"] not in (channel, "*"):
        raise Refusal(CloseCode.AUTH_FAILED, AUTH_FAILED)
    user = _text(claims.get("user"))
    return Identity(user, _text(claims.get("username")) or user)


def _text(claim: Any) -> str | None:
    """A claim as the text members see, at most MAX_NAME characters: a string as it is,
    anything else as JSON (PieSocket's server SDKs put an object in `user`)."""
    if claim is None:
        return None
    text = claim if isinstance(claim, str) else orjson.dumps(claim).decode()
    return text[:MAX_NAME]


def sign_token(secret: str, channel: str, username: str | None = None,
               ttl: int = TOKEN_TTL) -> str:
    """A token for `channel` (or `*`) carrying `username`, valid for `ttl` seconds."""
    claims: dict[str, Any] = {"sub": channel, "exp": int(time.time()) + ttl}
    if username:
        claims["username"] = username
        claims["user"] = username
    return jwt.encode(claims, secret, algorithm="HS256")
