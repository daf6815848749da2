"""TLS: `c8ws dev-cert` and `serve --certfile --keyfile` give wss://, which the real
piesocket-js SDK (always wss://) uses with presence."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.live import UNIT, Server, connect, recv

SDK_DIR = Path(__file__).parent / "sdk"


@pytest.fixture
def tls_server(make_server: Callable[..., Server], tmp_path: Path) -> tuple[Server, Path]:
    made = subprocess.run(
        [sys.executable, "-m", "app.cli", "dev-cert", "--out-dir", str(tmp_path / "tls")],
        capture_output=True, text=True, check=True, timeout=60)
    assert "dev-cert.pem" in made.stdout
    cert, key = tmp_path / "tls" / "dev-cert.pem", tmp_path / "tls" / "dev-key.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    live = make_server({"C8WS_CERTFILE": str(cert), "C8WS_KEYFILE": str(key)})
    assert f"c8ws listening on https://127.0.0.1:{live.port}" in live.log()
    return live, cert


@pytest.mark.asyncio
async def test_wss_with_dev_cert(tls_server: tuple[Server, Path]) -> None:
    """A client trusting the dev certificate chats over wss://."""
    live, cert = tls_server
    context = ssl.create_default_context(cafile=str(cert))
    url = f"wss://127.0.0.1:{live.port}/v3/secure?api_key=demo"
    async with await connect(url, ssl=context) as a, await connect(url, ssl=context) as b:
        await a.send("over tls")
        assert await recv(b) == "over tls"


@pytest.mark.skipif(shutil.which("node") is None and not os.environ.get("CI"),
                    reason="Node.js is not installed: the piesocket-js SDK test cannot run")
def test_real_piesocket_sdk_with_presence(tls_server: tuple[Server, Path]) -> None:
    """piesocket-js 5.1.0 connects with clusterDomain, publishes, receives, sees members."""
    live, cert = tls_server
    if not (SDK_DIR / "node_modules" / "piesocket-js").is_dir():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=SDK_DIR,
                       check=True, timeout=300)
    result = subprocess.run(
        ["node", "--experimental-websocket", "piesocket.mjs", str(live.port), "sdk-room"],
        cwd=SDK_DIR, capture_output=True, text=True, timeout=30 * UNIT,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(cert)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["received"] == [{"data": {"text": "hello from bob"}, "meta": {"sent": "by sdk"}}]
    assert outcome["annMembers"] == ["ann", "bob"] == outcome["bobMembers"]


def test_dev_cert_again_keeps_the_key_private(tmp_path: Path) -> None:
    """Run again over a key file that was opened up, `dev-cert` makes it private again."""
    command = [sys.executable, "-m", "app.cli", "dev-cert", "--out-dir", str(tmp_path)]
    subprocess.run(command, capture_output=True, check=True, timeout=60)
    key = tmp_path / "dev-key.pem"
    key.chmod(0o644)
    subprocess.run(command, capture_output=True, check=True, timeout=60)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
