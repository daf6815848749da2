"""Who is asking: the app named by an api key (public), or proven by its secret — in the
`X-Api-Secret` header for scripts, or a signed session cookie for people, with a CSRF token on
every state-changing request made with the cookie. A session holds for as long as the app's
secret is the one it signed in with."""

from __future__ import annotations

import hmac
import secrets
from typing import cast

from quart import current_app, request, session

from app.errors import ErrorCode
from app.node import Node
from app.store.base import App

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class HTTPError(Exception):
    """An HTTP error answer: status, stable code and a sentence."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


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


def secret_matches(app: App, secret: str) -> bool:
    """Whether `secret` is the app's, compared in constant time."""
    return hmac.compare_digest(app.secret.encode(), secret.encode())


def csrf_ok(sent: str | None) -> bool:
    """Whether a request carries the signed-in session's CSRF token."""
    return bool(sent) and hmac.compare_digest(str(sent), session.get("csrf", ""))


async def app_by_secret(secret: str) -> App | None:
    for app in await current_node().store.list_apps():
        if secret_matches(app, secret):
            return app
    return None


async def app_from_secret() -> App:
    """The app whose secret the request carries (header, or a signed-in session + CSRF)."""
    secret = request.headers.get("X-Api-Secret")
    if secret:
        app = await app_by_secret(secret)
        if app is None:
            raise HTTPError(401, ErrorCode.UNAUTHORIZED, "wrong secret")
        return app
    app = await signed_in_app()
    if app is None:
        raise HTTPError(401, ErrorCode.UNAUTHORIZED, "sign in, or send the X-Api-Secret header")
    if request.method not in SAFE_METHODS:
        sent = request.headers.get("X-CSRF-Token") or (await request.form).get("csrf_token")
        if not csrf_ok(sent):
            raise HTTPError(403, ErrorCode.FORBIDDEN, "missing or wrong CSRF token")
    return app


def _secret_proof(app: App) -> str:
    """What a session keeps of the app's secret. It stops matching once the secret changes,
    which signs out every browser signed in with the old one (a leaked secret is replaced to
    lock people out). Keyed with the server's session key: a cookie is signed, not encrypted,
    and must not let whoever holds one test guesses of the secret."""
    key = str(current_app.secret_key).encode()
    return hmac.new(key, f"{app.id}\0{app.secret}".encode(), "sha256").hexdigest()


SIGNED_OUT = "You were signed out: the app's secret changed, or the app is gone."


async def signed_in_app() -> App | None:
    """The app this browser signed in to, while it exists and its secret is unchanged;
    otherwise None, and the sign-in is forgotten (the sign-in form says why, once)."""
    name = session.get("app")
    if name is None:
        return None
    app = await current_node().store.app_by_name(str(name))
    proof = session.get("proof")
    if app is None or not hmac.compare_digest(str(proof or ""), _secret_proof(app)):
        session.pop("app", None)
        session.pop("proof", None)
        if proof is not None:  # not a session from before proofs were kept
            session["signed_out"] = True
        return None
    return app


def signed_out_notice() -> str | None:
    """Why the last sign-in ended, if it was ended by a changed secret; told once."""
    return SIGNED_OUT if session.pop("signed_out", False) else None


def sign_in(app: App) -> None:
    """Remember the app in the session cookie, with a fresh CSRF token."""
    session.clear()
    session["app"] = app.name
    session["proof"] = _secret_proof(app)
    session["csrf"] = secrets.token_urlsafe(24)


def csrf_token() -> str:
    """The session's CSRF token (made on first use)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return cast(str, session["csrf"])
