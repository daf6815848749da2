"""The sign-in links the start-up banner prints. They are signed with the session key, so any
worker or host that shares it takes them, and they expire; each process remembers the links
used on it, so a link signs in once (once per worker of `serve --workers N`)."""

from __future__ import annotations

import secrets

from itsdangerous import BadData, URLSafeTimedSerializer

MAX_AGE = 15 * 60  # seconds a link stays good: one from old logs is dead after a restart


class SigninLinks:
    def __init__(self, key: str) -> None:
        self._serializer = URLSafeTimedSerializer(key, salt="c8ws sign-in link")
        self._used: set[str] = set()

    def new(self, app_name: str) -> str:
        """A token that signs a browser in as `app_name`."""
        return self._serializer.dumps({"app": app_name, "once": secrets.token_hex(8)})

    def take(self, token: str) -> str | None:
        """The app a token signs in to; None if it is forged, expired or used here already."""
        try:
            fields = self._serializer.loads(token, max_age=MAX_AGE)
            app_name, once = str(fields["app"]), str(fields["once"])
        except (BadData, TypeError, KeyError):
            return None
        if once in self._used:
            return None
        self._used.add(once)
        return app_name
