"""Signed user tokens: HS256 JWTs signed with the app secret. A member's `username` comes from a
verified token and nowhere else."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from app.errors import CloseCode, Refusal

AUTH_FAILED = "Authentication failed, provide valid jwt token."
PRIVATE_PREFIX = "private-"
TOKEN_TTL = 24 * 3600


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
            token, secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}
        )
    except jwt.PyJWTError:
        raise Refusal(CloseCode.AUTH_FAILED, AUTH_FAILED) from None
    if claims["sub"] not in (channel, "*"):
        raise Refusal(CloseCode.AUTH_FAILED, AUTH_FAILED)
    user = claims.get("user")
    username = claims.get("username") or user
    return Identity(
        str(user) if user is not None else None,
        str(username)[:128] if username is not None else None,
    )


def sign_token(secret: str, channel: str, username: str | None = None,
               ttl: int = TOKEN_TTL) -> str:
    """A token for `channel` (or `*`) carrying `username`, valid for `ttl` seconds."""
    claims: dict[str, Any] = {"sub": channel, "exp": int(time.time()) + ttl}
    if username:
        claims["username"] = username
        claims["user"] = username
    return jwt.encode(claims, secret, algorithm="HS256")
