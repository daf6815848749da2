"""HTTP routes: widgets, the demo auth endpoint, admin sign-in and CSRF."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import orjson
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from app.signin_links import MAX_AGE
from tests.http import Client
from tests.live import Server

WIDGET = {"name": "Mine", "html": "<p>hi</p>", "css": "p{}", "js": "1;"}


def test_widgets_list_samples_and_read_one(server: Server) -> None:
    """The four samples are listed and readable with the api key."""
    client = Client(server.http)
    status, body, _ = client.request("GET", "/api/widgets?api_key=demo")
    assert status == 200
    ids = [w["id"] for w in body["widgets"] if w["builtin"]]
    assert ids == ["chat", "poll", "leaderboard", "cursors"]
    status, poll, _ = client.request("GET", "/api/widgets/poll", headers={"X-Api-Key": "demo"})
    assert status == 200 and "groupBy" in poll["js"]
    assert client.request("GET", "/api/widgets/nope?api_key=demo")[0] == 404
    assert client.request("GET", "/api/widgets")[0] == 401


def test_widget_writes_need_the_secret(server: Server) -> None:
    """PUT/DELETE without the secret are 401 with a JSON error and change nothing."""
    client = Client(server.http)
    for headers in ({}, {"X-Api-Secret": "wrong"}, {"X-Api-Key": "demo"}):
        status, body, _ = client.request("PUT", "/api/widgets/sneaky", WIDGET, headers=headers)
        assert status == 401 and body["error"]["code"] == "unauthorized"
    assert client.request("GET", "/api/widgets/sneaky?api_key=demo")[0] == 404


def test_widget_crud_with_secret(server: Server) -> None:
    """Saved widgets shadow samples of the same id, and can be deleted."""
    client = Client(server.http)
    secret = {"X-Api-Secret": server.secret}
    status, saved, _ = client.request("PUT", "/api/widgets/poll", {**WIDGET, "name": "My poll"},
                                      headers=secret)
    assert status == 200 and saved["updated"] > 0 and not saved["builtin"]
    _, listed, _ = client.request("GET", "/api/widgets?api_key=demo")
    assert [w["name"] for w in listed["widgets"] if w["id"] == "poll"] == ["My poll"]
    assert client.request("DELETE", "/api/widgets/poll", headers=secret)[0] == 200
    _, poll, _ = client.request("GET", "/api/widgets/poll?api_key=demo")
    assert poll["builtin"] is True
    assert client.request("DELETE", "/api/widgets/poll", headers=secret)[0] == 404


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/api/widgets/Bad_Id", WIDGET, "invalid_request"),
        ("/api/widgets/ok", {**WIDGET, "extra": 1}, "invalid_request"),
        ("/api/widgets/ok", {"html": "x"}, "invalid_request"),
        ("/api/widgets/ok", [1], "invalid_request"),
        ("/api/widgets/ok", b"{nope", "invalid_json"),
    ],
)
def test_bad_widget_bodies_are_400(server: Server, path: str, body: object, code: str) -> None:
    """Unknown keys, missing names, bad ids and malformed JSON are refused, naming the problem."""
    status, answer, _ = Client(server.http).request(
        "PUT", path, body, headers={"X-Api-Secret": server.secret})
    assert status == 400
    assert answer["error"]["code"] == code and answer["error"]["message"]


def test_broadcasting_auth_signs_demo_tokens(server: Server) -> None:
    """Form and JSON requests get an HS256 token for the channel signed with the demo secret."""
    client = Client(server.http)
    status, body, _ = client.request("POST", "/broadcasting/auth",
                                     form={"channel_name": "private-room", "socket_id": "1.2"})
    assert status == 200
    claims = jwt.decode(body["auth"], server.secret, algorithms=["HS256"])
    assert claims["sub"] == "private-room"
    status, body, _ = client.request("POST", "/broadcasting/auth",
                                     {"channel_name": "room", "username": "zoe"})
    assert jwt.decode(body["auth"], server.secret, algorithms=["HS256"])["username"] == "zoe"
    status, body, _ = client.request("POST", "/broadcasting/auth", {"channel_name": "a/b"})
    assert status == 400 and body["error"]["code"] == "invalid_request"


def test_a_signed_in_apps_playground_is_that_apps(server: Server) -> None:
    """Signed in to an app other than demo, the playground works with that app's key, and its
    viewers' tokens are signed with that app's secret, for its owner only: before, the page
    listed and connected to demo while Save wrote to the signed-in app."""
    created = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--name", "quiz", "--key",
         "quiz-key", "--data-dir", str(server.data_dir)], capture_output=True, text=True,
        check=True)
    secret = next(line.split()[-1] for line in created.stdout.splitlines()
                  if line.startswith("secret"))
    stranger = Client(server.http)
    asked = {"channel_name": "room", "username": "ann"}
    assert stranger.request("POST", "/broadcasting/auth", asked,
                            headers={"X-Api-Key": "quiz-key"})[0] == 401
    owner = Client(server.http)
    sign_in_with(owner, secret)
    _, page, _ = owner.request("GET", "/playground")
    config = re.search(r'"apiKey":"([^"]*)".*"csrf":"([^"]+)"', page)
    assert config is not None and config.group(1) == "quiz-key"
    assert owner.request("POST", "/broadcasting/auth", asked,
                         headers={"X-Api-Key": "quiz-key"})[0] == 403  # no CSRF token
    status, body, _ = owner.request(
        "POST", "/broadcasting/auth", asked,
        headers={"X-Api-Key": "quiz-key", "X-CSRF-Token": config.group(2)})
    assert status == 200
    assert jwt.decode(body["auth"], secret, algorithms=["HS256"])["username"] == "ann"
    _, body, _ = owner.request("POST", "/broadcasting/auth", asked)  # no key: demo, as before
    assert jwt.decode(body["auth"], server.secret, algorithms=["HS256"])["username"] == "ann"


def test_sign_in_with_one_time_link_then_save_with_csrf(server: Server) -> None:
    """The banner's link signs in once; cookie writes need the page's CSRF token."""
    token = re.search(r"/signin\?token=(\S+)", server.log())
    assert token is not None
    client = Client(server.http)
    status, _, headers = client.request("GET", f"/signin?token={token.group(1)}")
    assert status == 302 and headers["Location"].endswith("/playground")
    stranger = Client(server.http)
    for used_or_forged in (token.group(1), token.group(1)[:-2] + "xx"):
        status, page, _ = stranger.request("GET", f"/signin?token={used_or_forged}")
        assert status == 200 and "That sign-in link was used already" in page  # the form
    status, body, _ = client.request("PUT", "/api/widgets/cookie", WIDGET)
    assert status == 403 and body["error"]["code"] == "forbidden"
    _, page, _ = client.request("GET", "/playground")
    csrf = re.search(r'"csrf":"([^"]+)"', page)
    assert csrf is not None
    status, _, _ = client.request("PUT", "/api/widgets/cookie", WIDGET,
                                  headers={"X-CSRF-Token": csrf.group(1)})
    assert status == 200


def test_sign_in_links_expire(server: Server) -> None:
    """A link signed with the server's own key and salt signs in while fresh and is refused
    once older than MAX_AGE: a link from old logs is dead."""
    key = (server.data_dir / "session.key").read_text().strip()

    def link(age: int) -> str:
        class Signer(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(time.time()) - age

        serializer = URLSafeTimedSerializer(key, salt="c8ws sign-in link", signer=Signer)
        return str(serializer.dumps({"app": "demo", "once": f"age{age}"}))

    client = Client(server.http)
    status, page, _ = client.request("GET", f"/signin?token={link(MAX_AGE + 60)}")
    assert status == 200 and "That sign-in link was used already" in page  # the form
    status, _, headers = client.request("GET", f"/signin?token={link(MAX_AGE - 60)}")
    assert status == 302 and headers["Location"].endswith("/playground")


def test_sign_in_form(server: Server) -> None:
    """A wrong secret is refused; the right one signs in."""
    client = Client(server.http)
    _, page, _ = client.request("GET", "/signin")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    status, _, _ = client.request("POST", "/signin",
                                  form={"csrf_token": csrf.group(1), "secret": "nope"})
    assert status == 401
    status, _, _ = client.request("POST", "/signin",
                                  form={"csrf_token": "forged", "secret": server.secret})
    assert status == 403
    status, _, _ = client.request("POST", "/signin",
                                  form={"csrf_token": csrf.group(1), "secret": server.secret})
    assert status == 302
    _, page, _ = client.request("GET", "/playground")
    assert "signed in as" in page


def test_docs_are_served_from_the_markdown(server: Server) -> None:
    """/docs renders the README; unknown pages are a JSON 404."""
    client = Client(server.http)
    status, page, _ = client.request("GET", "/docs")
    assert status == 200 and "<h2 id=\"security\">Security</h2>" in page
    assert "<table>" in page
    status, body, _ = client.request("GET", "/docs/nope")
    assert status == 404 and body["error"]["code"] == "not_found"
    assert client.request("GET", "/docs/..%2Fapp")[0] == 404


def test_docs_links_and_images_lead_somewhere(server: Server) -> None:
    """The Markdown's relative links and images work on the served pages: every link between
    them opens a page holding its anchor, and every image is served."""
    client = Client(server.http)
    pages = {path: client.request("GET", path)[1]
             for path in ("/docs", "/docs/protocol", "/docs/operations", "/docs/widgets")}
    links = {link for page in pages.values() for link in re.findall(r'href="([^"]*)"', page)}
    assert not [link for link in links if ".md" in link]
    for link in sorted(link for link in links if link.startswith("/docs")):
        path, _, anchor = link.partition("#")
        if path not in pages:
            status, pages[path], _ = client.request("GET", path)
            assert status == 200, link
        assert not anchor or f'id="{anchor}"' in pages[path], link
    images = re.findall(r'<img[^>]* src="([^"]*)"', pages["/docs"])
    assert len(images) == 2
    for image in images:
        status, body, headers = client.request("GET", image)
        assert status == 200 and headers["Content-Type"] == "image/png" and body[:4] == b"\x89PNG"
    assert client.request("GET", "/docs/images/..%2F..%2FREADME.md")[0] == 404


def test_pages_name_an_icon_that_is_served(server: Server) -> None:
    """Pages link their icon, so browsers do not ask for a /favicon.ico that is not there; the
    shim is readable from any origin (viewers and other sites load it with `crossorigin`)."""
    client = Client(server.http)
    for path in ("/playground", "/docs", "/signin"):
        _, page, _ = client.request("GET", path)
        icon = re.search(r'<link rel="icon" href="([^"]+)"', page)
        assert icon is not None, path
        status, _, headers = client.request("GET", icon.group(1))
        assert status == 200 and headers["Content-Type"].startswith("image/svg+xml")
    _, _, headers = client.request("GET", "/static/c8-player-api.js")
    assert headers["Access-Control-Allow-Origin"] == "*"


def test_sign_in_never_redirects_off_site(server: Server) -> None:
    """`next` may only name a page of this server."""
    for target, expected in [("https://evil.example/", "/playground"),
                             ("//evil.example/", "/playground"), ("/connections", "/connections")]:
        client = Client(server.http)
        _, page, _ = client.request("GET", "/signin")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf is not None
        status, _, headers = client.request(
            "POST", f"/signin?next={target}",
            form={"csrf_token": csrf.group(1), "secret": server.secret})
        assert status == 302 and headers["Location"].endswith(expected)
        assert "evil" not in headers["Location"]


def test_embed_tokens_only_for_the_demo_app(server: Server) -> None:
    """/embed lends a signed name for the demo app's public channels only."""
    client = Client(server.http)
    _, page, _ = client.request("GET", "/embed/chat?channel=room&user=zed")
    assert '"token"' in page
    _, page, _ = client.request("GET", "/embed/chat?channel=private-room&user=admin")
    assert '"token"' not in page
    status, page, headers = client.request("GET", "/embed/chat?channel=a%2Fb")
    assert status == 400 and headers["Content-Type"].startswith("text/html")
    assert "This widget cannot be shown: invalid channel id." in page  # inside an iframe
    status, page, _ = client.request("GET", "/embed/nope?channel=room")
    assert status == 404 and "no widget &#39;nope&#39;" in page
    created = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--name", "embedder", "--key",
         "embedder-key", "--data-dir", str(server.data_dir)], capture_output=True, check=True)
    assert created.returncode == 0
    _, page, _ = client.request("GET", "/embed/chat?api_key=embedder-key&channel=room&user=x")
    assert '"token"' not in page and "embedder-key" in page


def test_session_cookie_is_not_signed_with_the_demo_secret(server: Server) -> None:
    """Knowing the (shared) demo secret does not let anyone forge a session."""
    from itsdangerous import URLSafeTimedSerializer

    def cookie(key: str, **proven: str) -> str:
        return URLSafeTimedSerializer(
            key, salt="cookie-session",
            signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha1},
        ).dumps({"app": "demo", "csrf": "x", **proven})

    demo_derived = hmac.new(server.secret.encode(), b"c8ws session", "sha256").hexdigest()
    real = (server.data_dir / "session.key").read_text().strip()
    proof = hmac.new(real.encode(), f"demo\0{server.secret}".encode(), "sha256").hexdigest()
    client = Client(server.http)
    # The real key with the proof proves the recipe; without the proof it is not enough.
    for key, proven, status in ((demo_derived, {"proof": proof}, 401), (real, {}, 401),
                                (real, {"proof": proof}, 200)):
        answer = client.request("GET", "/api/channels",
                                headers={"Cookie": f"session={cookie(key, **proven)}"})
        assert answer[0] == status


def test_a_new_secret_signs_every_browser_out(make_server: Callable[..., Server],
                                             tmp_path: Path) -> None:
    """Replacing the app's secret (a leaked one) ends the sessions signed in with the old one:
    the API answers 401 and the pages ask to sign in again; the new secret signs in."""
    data = tmp_path / "rotated"
    first = make_server({"C8WS_DEMO_SECRET": "the-old-secret-0123456789"}, data_dir=data)
    client = Client(first.http)
    sign_in_with(client, "the-old-secret-0123456789")
    assert client.request("GET", "/api/channels")[0] == 200
    assert client.request("GET", "/connections")[0] == 200
    first.stop()

    second = make_server({"C8WS_DEMO_SECRET": "the-new-secret-9876543210"}, data_dir=data)
    client.base = second.http  # same cookie jar: the host is the same, only the port moved
    status, body, _ = client.request("GET", "/api/channels")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, _, headers = client.request("GET", "/connections")
    assert status == 302 and "/signin" in headers["Location"]
    _, page, _ = client.request("GET", headers["Location"])
    assert "the app&#39;s secret changed" in page  # said once, on the form
    _, page, _ = client.request("GET", "/playground")
    assert "signed in as" not in page
    _, page, _ = client.request("GET", "/signin")
    assert "secret changed" not in page
    sign_in_with(client, "the-new-secret-9876543210")
    assert client.request("GET", "/api/channels")[0] == 200


def sign_in_with(client: Client, secret: str) -> None:
    _, page, _ = client.request("GET", "/signin")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    status, _, _ = client.request("POST", "/signin",
                                  form={"csrf_token": csrf.group(1), "secret": secret})
    assert status == 302


def test_unknown_routes_and_methods_answer_json(server: Server) -> None:
    """Even the framework's own 404 and 405 are JSON errors."""
    client = Client(server.http)
    status, body, _ = client.request("GET", "/api/nothing-here")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body, _ = client.request("DELETE", "/healthz")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    # A body past the limit is refused on its Content-Length, before it is sent.
    connection = http.client.HTTPConnection(server.http.removeprefix("http://"), timeout=10)
    connection.putrequest("POST", "/api/channels/x/search")
    connection.putheader("X-Api-Key", "demo")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(17 << 20))
    connection.endheaders()
    response = connection.getresponse()
    body = orjson.loads(response.read())
    connection.close()
    assert response.status == 413 and body["error"]["code"] == "too_large"
    assert "16777216 bytes" in body["error"]["message"]
