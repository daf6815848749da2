"""Every code block in docs/ runs against a live server, so the documents cannot drift from the
code: Python blocks run and print what their comments say, JSON blocks are searches that must
succeed, HTTP blocks are requests that must get a 2xx."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.http import Client
from tests.live import UNIT, Server

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
PRINTED = re.compile(r"print\(.*\)\s*#\s?(.*)$")


def blocks(kind: str) -> list[tuple[str, str]]:
    found = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        for number, match in enumerate(BLOCK.finditer(text)):
            if match.group(1) == kind:
                found.append((f"{path.name}#{number}", match.group(2)))
    return found


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    live = Server(tmp_path_factory.mktemp("docs")).start()
    yield live
    live.stop()


def test_docs_have_examples() -> None:
    """The documents carry examples of every kind this test runs, and no other kind but the
    widget examples, which the browser tests run."""
    assert len(blocks("python")) >= 3 and blocks("json") and blocks("http") and blocks("sh")
    kinds = {m.group(1) for path in DOCS.glob("*.md")
             for m in BLOCK.finditer(path.read_text(encoding="utf-8"))}
    assert kinds == {"python", "json", "http", "sh", "js", "html"}


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
    env = {**os.environ, "C8WS_DATA_DIR": str(operator_dir),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=operator_dir, env=env,
                            capture_output=True, text=True, timeout=60 * UNIT)
    assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"


@pytest.mark.parametrize(("name", "code"), blocks("python"), ids=lambda v: v[:24])
def test_python_examples_print_what_they_say(docs_server: Server, name: str, code: str) -> None:
    """A Python example runs and prints, line by line, what its `# comments` promise."""
    source = code.replace("127.0.0.1:8000", f"127.0.0.1:{docs_server.port}")
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                            timeout=30 * UNIT)
    assert result.returncode == 0, f"{name}: {result.stderr}"
    promised = [m.group(1).strip() for line in code.splitlines()
                if (m := PRINTED.search(line.strip()))]
    assert result.stdout.strip().splitlines() == promised, name


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
def test_http_examples_succeed(docs_server: Server, name: str, code: str) -> None:
    """Each HTTP example, sent as written (with the real secret), gets a 2xx."""
    head, _, body = code.replace("DEMO_SECRET", docs_server.secret).partition("\n\n")
    request_line, *header_lines = head.strip().splitlines()
    method, path = request_line.split()
    headers = dict(line.split(": ", 1) for line in header_lines)
    status, answer, _ = Client(docs_server.http).request(
        method, path, body.strip().encode() or None, headers=headers)
    assert 200 <= status < 300, f"{name}: {status} {answer}"
