"""Every code block in docs/ runs against a live server, so the documents cannot drift from the
code: Python blocks run and print what their comments say, JSON blocks are searches that must
succeed, HTTP blocks are requests that get the answer written under them (or a 2xx), shell
blocks run in a data directory, and exchange blocks are conversations of WebSocket frames (and
HTTP calls) played against a server and compared frame by frame.

Blocks of one kind run in document order and may build on earlier ones (an HTTP search finds
what an earlier HTTP publish stored); each exchange stands alone on channels of its own.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from app.config import Settings, env_name
from app.errors import CloseCode, ErrorCode
from app.limits import OVERRIDABLE
from tests.http import Client
from tests.live import UNIT, Server, connect

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
PRINTED = re.compile(r"print\(.*\)\s*#\s?(.*)$")
ANY = "\u2026"  # "…" in a document stands for any value
VOLATILE = frozenset({"id", "epoch", "created", "first_created", "last_created", "updated",
                      "connected_at", "time", "auth"})
"""Keys whose values differ on every run: compared by type, and remembered (see Bindings)."""
DATA_FILE = "var/c8ws.sqlite3"
"""The SQLite file of a server started in the repository, as documents name it."""


def blocks(kind: str, document: str = "*") -> list[tuple[str, str]]:
    found = []
    for path in sorted(DOCS.glob(f"{document}.md")):
        text = path.read_text(encoding="utf-8")
        for number, match in enumerate(BLOCK.finditer(text)):
            if match.group(1) == kind:
                found.append((f"{path.name}#{number}", match.group(2)))
    return found


def document(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


# Shapes: what a document shows against what the server sent --------------------------------------


class Bindings:
    """A document writes a realistic id or epoch; the server sends another. The first time a
    written value meets a real one they are bound, later uses of the written value must meet the
    same real value, and requests written with it are sent with the real one."""

    def __init__(self) -> None:
        self.real: dict[str, str] = {}

    def bind(self, written: Any, real: Any, where: str) -> str | None:
        if type(written) is not type(real) and not (_number(written) and _number(real)):
            return f"{where}: expected a {type(written).__name__}, got {real!r}"
        if isinstance(written, str) and written != ANY:
            known = self.real.setdefault(written, real)
            if known != real:
                return f"{where}: {written!r} stood for {known!r} before, now {real!r}"
        return None

    def apply(self, text: str) -> str:
        for written, real in self.real.items():
            if len(written) >= 6:
                text = text.replace(written, real)
        return text


def loads_written(text: str) -> Any:
    """JSON as a document writes it, where a bare `…` stands for any value."""
    return orjson.loads(re.sub(f'(?<!"){ANY}(?!")', f'"{ANY}"', text))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def mismatch(expected: Any, actual: Any, bindings: Bindings, where: str = "") -> str | None:
    """Why `actual` does not have the shape of `expected`, or None when it does."""
    here = where or "the frame"
    if expected == ANY:
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or list(expected) != list(actual):
            return f"{here}: expected keys {list(expected)}, got {actual!r}"
        for key, value in expected.items():
            path = f"{where}.{key}" if where else key
            found = (bindings.bind(value, actual[key], path) if key in VOLATILE
                     else mismatch(value, actual[key], bindings, path))
            if found:
                return found
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(expected) != len(actual):
            return f"{here}: expected {len(expected)} items, got {actual!r}"
        for index, (item, real) in enumerate(zip(expected, actual, strict=True)):
            found = mismatch(item, real, bindings, f"{where}[{index}]")
            if found:
                return found
        return None
    if isinstance(expected, str):
        expected = bindings.apply(expected)
    same_kind = isinstance(expected, bool) == isinstance(actual, bool)
    if same_kind and expected == actual and type(expected) is type(actual):
        return None
    if same_kind and _number(expected) and _number(actual) and expected == actual:
        return None
    return f"{here}: expected {expected!r}, got {actual!r}"


def text_matches(expected: str, actual: str) -> bool:
    """Plain text, where `…` stands for anything."""
    pattern = ".*".join(re.escape(part) for part in expected.split(ANY))
    return re.fullmatch(pattern, actual, re.DOTALL) is not None


def frame_mismatch(expected: str, actual: str | bytes, bindings: Bindings) -> str | None:
    """A frame as the document writes it (JSON or text) against the frame received."""
    if isinstance(actual, bytes):
        return f"expected {expected}, got binary {actual!r}"
    try:
        wanted, got = loads_written(expected), orjson.loads(actual)
    except orjson.JSONDecodeError:
        wanted = got = None
    if wanted is not None and isinstance(wanted, dict | list):
        found = mismatch(wanted, got, bindings)
        return None if found is None else f"{found}\n  whole frame: {actual}"
    if text_matches(bindings.apply(expected), actual):
        return None
    return f"expected {expected!r}, got {actual!r}"


def body_mismatch(expected: str, kind: str, actual: Any, bindings: Bindings) -> str | None:
    """An HTTP answer's body against the one written: JSON by shape, NDJSON line by line, text
    as lines that must appear in this order (`…` for anything)."""
    if not expected.strip():
        return None
    if kind.startswith("application/json"):
        return mismatch(loads_written(expected), actual, bindings, "body")
    lines = [line for line in str(actual).splitlines() if line.strip()]
    if kind.startswith("application/x-ndjson"):
        wanted = [loads_written(line) for line in expected.splitlines() if line.strip()]
        return mismatch(wanted, [orjson.loads(line) for line in lines], bindings, "body")
    position = 0
    for line in (line for line in expected.splitlines() if line.strip()):
        while position < len(lines) and not text_matches(line, lines[position]):
            position += 1
        if position == len(lines):
            return f"no line like {line!r} (in order) in:\n{actual}"
        position += 1
    return None


# HTTP --------------------------------------------------------------------------------------------


@dataclass
class Request:
    """An HTTP request as a document writes it (`DEMO_SECRET` and written ids not yet real)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None


def http_call(client: Client, request: Request, secret: str,
              bindings: Bindings) -> tuple[int, Any, Any]:
    """Send a written request with the real secret and the real ids the bindings know."""
    headers = {name: bindings.apply(value.replace("DEMO_SECRET", secret))
               for name, value in request.headers.items()}
    body = request.body
    if body is not None:
        body = bindings.apply(body.decode().replace("DEMO_SECRET", secret)).encode()
    return client.request(request.method, bindings.apply(request.path), body, headers=headers)


def parse_http(code: str) -> tuple[Request, tuple[int, str, str] | None]:
    """An HTTP block: the request, then optionally `HTTP/1.1 STATUS …`, headers and body."""
    asked, *rest = re.split(r"^(?=HTTP/1\.1 )", code, maxsplit=1, flags=re.MULTILINE)
    answered = rest[0] if rest else ""
    head, _, body = asked.partition("\n\n")
    request_line, *header_lines = head.strip().splitlines()
    method, path = request_line.split()
    headers = dict(line.split(": ", 1) for line in header_lines)
    request = Request(method, path, headers, body.strip().encode() or None)
    if not answered:
        return request, None
    head, _, body = answered.partition("\n\n")
    status_line, *header_lines = head.strip().splitlines()
    kind = dict(line.split(": ", 1) for line in header_lines).get("Content-Type", "")
    return request, (int(status_line.split()[1]), kind, body.strip())


# Exchanges ---------------------------------------------------------------------------------------

SERVER_LINE = re.compile(r"^# on a server started with (.+)$")
SETUP_LINE = re.compile(r"^# after the operator ran: (.+)$")
STEP = re.compile(r"^(\w+)\s+(opens|closes|\u2192|\u2190)(?:\s+(.*))?$")
HTTP_STEP = re.compile(r"^(GET|POST|PUT|DELETE) (\S+)((?: [\w-]+: \S+)*)\s*(.*)$")
CLOSE = re.compile(r"^close (\d{4})(?: (.*))?$")


@dataclass
class Step:
    """One line of an exchange: a client (or `http`), what it does, and the frame or path."""

    who: str
    verb: str
    text: str


@dataclass
class Exchange:
    """An exchange block: the server settings it needs, an app setting to apply, its steps."""

    env: tuple[tuple[str, str], ...] = ()
    setup: str = ""
    steps: list[Step] = field(default_factory=list)


def parse_exchange(code: str) -> Exchange:
    """Lines `NAME opens PATH [Header: value]`, `NAME → FRAME`, `NAME ← FRAME`,
    `NAME ← close CODE [reason]`, `NAME closes`; `http → METHOD PATH [Header: value] [body]`
    and `http ← STATUS [body]`. Indented lines continue the frame above; `#` lines are comments,
    except `# on a server started with VAR=value …` and `# after the operator ran: COMMAND`."""
    exchange = Exchange()
    for line in code.splitlines():
        if not line.strip():
            continue
        if line[0].isspace() and exchange.steps:
            exchange.steps[-1].text += " " + line.strip()
            continue
        if line.startswith("#"):
            if match := SERVER_LINE.match(line):
                pairs = (word.split("=", 1) for word in shlex.split(match.group(1)))
                exchange.env = tuple((name, value) for name, value in pairs)
            elif match := SETUP_LINE.match(line):
                exchange.setup = match.group(1)
            continue
        match = STEP.match(line)
        assert match, f"not an exchange line: {line!r}"
        exchange.steps.append(Step(match.group(1), match.group(2), match.group(3) or ""))
    return exchange


def is_count(frame: str | bytes) -> bool:
    """A c8 `connections` frame: they come whenever the count changes, so documents show only
    the ones that matter and the player skips the others."""
    return isinstance(frame, str) and frame.startswith('{"connections":')


class Player:
    """Plays one exchange against a server."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.clients: dict[str, ClientConnection] = {}
        self.bindings = Bindings()
        self.http = Client(server.http)
        self.last_http: tuple[int, Any, Any] | None = None

    async def play(self, exchange: Exchange) -> None:
        try:
            for number, step in enumerate(exchange.steps, 1):
                try:
                    await self.step(step)
                except AssertionError as error:
                    raise AssertionError(f"step {number} ({step.who} {step.verb} "
                                         f"{step.text[:60]}): {error}") from None
            await self.nothing_more()
        finally:
            for client in self.clients.values():
                await client.close()

    async def step(self, step: Step) -> None:
        if step.who == "http":
            self.http_step(step)
        elif step.verb == "opens":
            path, *headers = step.text.split(" ", 1)
            extra = dict(re.findall(r"([\w-]+): (\S+)", headers[0])) if headers else {}
            self.clients[step.who] = await connect(
                self.server.ws(self.bindings.apply(path)), additional_headers=extra)
        elif step.verb == "closes":
            await self.clients.pop(step.who).close()
        elif step.verb == "\u2192":
            text = self.bindings.apply(step.text.replace("DEMO_SECRET", self.server.secret))
            await self.clients[step.who].send(text)
        elif match := CLOSE.match(step.text):
            await self.expect_close(step.who, int(match.group(1)), match.group(2))
        else:
            await self.expect_frame(step.who, step.text)

    def http_step(self, step: Step) -> None:
        if step.verb == "\u2192":
            match = HTTP_STEP.match(step.text)
            assert match, f"not an HTTP request: {step.text!r}"
            headers = dict(re.findall(r"([\w-]+): (\S+)", match.group(3)))
            body = match.group(4).encode() or None
            self.last_http = http_call(self.http, Request(match.group(1), match.group(2),
                                                          headers, body),
                                       self.server.secret, self.bindings)
            return
        assert self.last_http is not None, "an HTTP answer without a request"
        status, body, _ = self.last_http
        written_status, _, written_body = step.text.partition(" ")
        assert status == int(written_status), f"HTTP {status}: {body}"
        if written_body:
            found = mismatch(loads_written(written_body), body, self.bindings, "body")
            assert found is None, found

    async def receive(self, who: str) -> str | bytes:
        return await asyncio.wait_for(self.clients[who].recv(), 10 * UNIT)

    async def expect_frame(self, who: str, written: str) -> None:
        skipped = []
        while True:
            try:
                frame = await self.receive(who)
            except websockets.ConnectionClosed as closed:
                raise AssertionError(f"closed ({closed.rcvd}) while waiting for {written}; "
                                     f"skipped {skipped}") from None
            except TimeoutError:
                raise AssertionError(f"nothing came; skipped {skipped}") from None
            found = frame_mismatch(written, frame, self.bindings)
            if found is None:
                return
            assert is_count(frame), found
            skipped.append(frame)

    async def expect_close(self, who: str, code: int, reason: str | None) -> None:
        client = self.clients.pop(who)
        try:
            while True:
                frame = await asyncio.wait_for(client.recv(), 10 * UNIT)
                assert is_count(frame), f"expected close {code}, got {frame!r}"
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None, "closed without a close frame"
            assert closed.rcvd.code == code, f"closed with {closed.rcvd.code} {closed.rcvd.reason}"
            if reason is not None:
                assert closed.rcvd.reason == reason, f"closed with reason {closed.rcvd.reason!r}"

    async def nothing_more(self) -> None:
        """No client got a frame the document does not show (counts aside)."""

        async def leftovers(who: str) -> list[str | bytes]:
            found: list[str | bytes] = []
            try:
                while True:
                    frame = await asyncio.wait_for(self.clients[who].recv(), 0.3 * UNIT)
                    if not is_count(frame):
                        found.append(frame)
            except TimeoutError:
                return found
            except websockets.ConnectionClosed as closed:
                return [*found, f"close {closed.rcvd}"]

        extra = await asyncio.gather(*(leftovers(who) for who in self.clients))
        unexpected = {who: frames for who, frames in zip(self.clients, extra, strict=True)
                      if frames}
        assert not unexpected, f"frames the document does not show: {unexpected}"


# Servers -----------------------------------------------------------------------------------------


def cli_env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "C8WS_DATA_DIR": str(data_dir),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Exchange], Server]]:
    """Servers by the settings an example asks for, started once each."""
    started: dict[tuple[tuple[tuple[str, str], ...], str], Server] = {}

    def server_for(exchange: Exchange) -> Server:
        spec = (exchange.env, exchange.setup)
        if spec not in started:
            folder = tmp_path_factory.mktemp("docs")
            started[spec] = Server(folder, dict(exchange.env)).start()
            if exchange.setup:
                subprocess.run(["bash", "-euo", "pipefail", "-c", exchange.setup],
                               env=cli_env(folder), check=True, capture_output=True,
                               timeout=30 * UNIT)
        return started[spec]

    yield server_for
    for live in started.values():
        live.stop()


@pytest.fixture(scope="module")
def docs_server(servers: Callable[[Exchange], Server]) -> Server:
    """The server of every example that asks for nothing special: the defaults."""
    return servers(Exchange())


@pytest.fixture(scope="module")
def http_bindings() -> Bindings:
    """HTTP blocks share bindings: a later block may use the id an earlier answer carried."""
    return Bindings()


# Tests -------------------------------------------------------------------------------------------


def test_docs_have_examples() -> None:
    """The documents carry examples of every kind this test runs, and no other kind but the
    widget examples, which the browser tests run."""
    assert len(blocks("python")) >= 3 and blocks("json") and blocks("http") and blocks("sh")
    assert len(blocks("exchange")) >= 10
    kinds = {m.group(1) for path in DOCS.glob("*.md")
             for m in BLOCK.finditer(path.read_text(encoding="utf-8"))}
    assert kinds == {"python", "json", "http", "sh", "exchange", "js", "html", "css"}


def test_exchanges_keep_to_their_own_channels() -> None:
    """No two exchanges open the same channel, so each one stands alone whatever ran before."""
    owners: dict[str, str] = {}
    for name, code in blocks("exchange"):
        exchange = parse_exchange(code)
        channels = {re.sub(r"\?.*", "", step.text.split("/", 2)[2])
                    for step in exchange.steps if step.verb == "opens"}
        for channel in channels:
            assert owners.setdefault(channel, name) == name, f"{channel} in {owners[channel]}"


def test_every_code_is_documented() -> None:
    """Every error code and close code the server sends has its row in the protocol's tables."""
    text = document("protocol.md")
    for name, value in vars(ErrorCode).items():
        if name.isupper():
            assert f"| `{value}` |" in text, value
    for code in CloseCode:
        assert f"| {int(code)} |" in text, code


def test_every_setting_and_limit_is_documented() -> None:
    """Every setting has its row (variable and default) in operations.md, and every per-app
    limit its variable and `keys set` flag in the protocol's Limits section."""
    rows = [line for line in document("operations.md").splitlines() if line.startswith("| `C8WS_")]
    for setting in fields(Settings):
        row = next((r for r in rows if f"`{env_name(setting.name)}`" in r), None)
        assert row is not None, env_name(setting.name)
        default = setting.default
        if isinstance(default, int | float) and not isinstance(default, bool):
            written = str(default) if isinstance(default, int) else f"{default:g}"
            assert f"`{written}`" in row, (env_name(setting.name), default)
    limits = document("protocol.md").split("## Limits", 1)[1].split("\n## ", 1)[0]
    for name in OVERRIDABLE:
        assert f"--{name.replace('_', '-')}" in limits, name
        if name != "allowed_origins":
            assert env_name(name) in limits, name


@pytest.mark.parametrize(("name", "code"), blocks("exchange"), ids=lambda v: v[:24])
async def test_exchanges_happen_as_written(servers: Callable[[Exchange], Server], name: str,
                                           code: str) -> None:
    """Each exchange, played against a server started as it says, gets the frames it shows."""
    exchange = parse_exchange(code)
    await Player(servers(exchange)).play(exchange)


@pytest.fixture(scope="module")
def operator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with a little stored data, as an operator's would have."""
    folder = tmp_path_factory.mktemp("operations")
    live = Server(folder).start()
    try:
        status, _, _ = Client(live.http).request("POST", "/api/publish", {
            "key": "demo", "secret": live.secret, "channelId": "poll1",
            "message": {"vote": "yes"}, "persistent": True})
        assert status == 200
    finally:
        live.stop()
    return folder


@pytest.mark.parametrize(("name", "code"), blocks("sh"), ids=lambda v: v[:24])
def test_shell_examples_run(operator_dir: Path, name: str, code: str) -> None:
    """Each shell example runs without error in a data directory of its own."""
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=operator_dir,
                            env=cli_env(operator_dir), capture_output=True, text=True,
                            timeout=60 * UNIT)
    assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"


@pytest.mark.parametrize(("name", "code"), blocks("python"), ids=lambda v: v[:24])
def test_python_examples_print_what_they_say(docs_server: Server, name: str, code: str) -> None:
    """A Python example runs and prints, line by line, what its `# comments` promise."""
    source = (code.replace("127.0.0.1:8000", f"127.0.0.1:{docs_server.port}")
              .replace("DEMO_SECRET", docs_server.secret)
              .replace(DATA_FILE, str(docs_server.data_dir / "c8ws.sqlite3")))
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                            timeout=30 * UNIT)
    assert result.returncode == 0, f"{name}: {result.stderr}"
    promised = [m.group(1).strip() for line in code.splitlines()
                if (m := PRINTED.search(line.strip()))]
    printed = result.stdout.strip().splitlines()
    assert len(printed) == len(promised), f"{name}: printed {printed}"
    for said, shown in zip(printed, promised, strict=True):
        assert text_matches(shown, said.rstrip()), f"{name}: printed {said!r}, comment: {shown!r}"


@pytest.mark.parametrize(("name", "code"), blocks("json"), ids=lambda v: v[:24])
def test_query_examples_are_valid_searches(docs_server: Server, name: str, code: str) -> None:
    """Each QUERY example is accepted by the search API and answers in the documented shape."""
    client = Client(docs_server.http)
    query = orjson.loads(code)
    status, body, _ = client.request("POST", "/api/channels/docs-queries/search", query,
                                     headers={"X-Api-Key": "demo"})
    assert status == 200, f"{name}: {body}"
    assert "total" in body and ("groups" in body) == ("groupBy" in query)


@pytest.mark.parametrize(("name", "code"), blocks("http"), ids=lambda v: v[:24])
def test_http_examples_answer_as_written(docs_server: Server, http_bindings: Bindings, name: str,
                                         code: str) -> None:
    """Each HTTP example, sent as written (with the real secret), gets the status and body
    written under it, or a 2xx when none is."""
    request, answer = parse_http(code)
    status, body, headers = http_call(Client(docs_server.http), request, docs_server.secret,
                                      http_bindings)
    if answer is None:
        assert 200 <= status < 300, f"{name}: {status} {body}"
        return
    written_status, kind, written_body = answer
    assert status == written_status, f"{name}: {status} {body}"
    if kind:
        assert headers.get("Content-Type", "").startswith(kind), f"{name}: {headers}"
    found = body_mismatch(written_body, kind or headers.get("Content-Type", ""), body,
                          http_bindings)
    assert found is None, f"{name}: {found}"
