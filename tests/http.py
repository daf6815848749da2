"""A tiny HTTP client for the tests: JSON in and out, cookies kept per client."""

from __future__ import annotations

import http.cookiejar
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

from tests.live import UNIT


class Client:
    """urllib with a cookie jar; `request` returns (status, parsed JSON or text, headers)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies), _NoRedirect())

    def request(
        self, method: str, path: str, body: Any = None, *,
        form: dict[str, str] | None = None, headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, Any]:
        data = None
        all_headers = dict(headers or {})
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = body if isinstance(body, bytes) else orjson.dumps(body)
            all_headers.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(self.base + path, data=data, headers=all_headers,
                                         method=method)
        try:
            response = self.opener.open(request, timeout=10 * UNIT)
        except urllib.error.HTTPError as error:
            response = error
        raw = response.read()
        kind = response.headers.get("Content-Type", "")
        parsed = (orjson.loads(raw) if kind.startswith("application/json")
                  else raw if kind.startswith("image/") else raw.decode())
        return response.status, parsed, response.headers


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
