"""The `c8ws` command: the start-up banner, the demo app's key and secret, and `keys`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app import create_app
from app.broker.base import BrokerError
from tests.broker.conftest import free_port
from tests.http import Client
from tests.live import UNIT, Server


def c8ws(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                          text=True, timeout=60, check=True)


def test_banner_prints_urls_key_and_secret(make_server: Callable[..., Server]) -> None:
    """The banner names the playground URL, the demo api key and its secret."""
    live = make_server()
    log = live.log()
    assert f"{live.http}/playground" in log
    assert "demo api key: demo" in log
    assert len(live.secret) >= 20


def test_banner_links_open_where_every_interface_listens(
        make_server: Callable[..., Server]) -> None:
    """Listening on 0.0.0.0, the banner's links name 127.0.0.1, which a browser can open."""
    live = make_server({"C8WS_HOST": "0.0.0.0"})
    assert f"c8ws listening on http://0.0.0.0:{live.port}" in live.log()
    assert f"playground:   http://127.0.0.1:{live.port}/playground" in live.log()
    links = [line for line in live.log().splitlines()
             if line.startswith(("  playground:", "  sign in:", "  websocket:"))]
    assert len(links) == 3 and not [line for line in links if "0.0.0.0" in line]


def test_demo_secret_is_kept_across_restarts_and_overridable(
    make_server: Callable[..., Server], tmp_path: Path,
) -> None:
    """The random secret is stored at first start; C8WS_DEMO_SECRET replaces it."""
    data = tmp_path / "kept"
    first = make_server(data_dir=data)
    secret = first.secret
    first.stop()
    second = make_server(data_dir=data)
    assert second.secret == secret
    second.stop()
    third = make_server({"C8WS_DEMO_SECRET": "s3cret-from-env"}, data_dir=data)
    assert third.secret == "s3cret-from-env"


def test_demo_key_is_configurable(make_server: Callable[..., Server], tmp_path: Path) -> None:
    """C8WS_DEMO_KEY names the demo app's key at first start; changed later, it changes nothing
    (an /embed without a key is still the demo app's)."""
    live = make_server({"C8WS_DEMO_KEY": "widgets"}, data_dir=tmp_path)
    assert "demo api key: widgets" in live.log()
    live.stop()
    again = make_server({"C8WS_DEMO_KEY": "another"}, data_dir=tmp_path)
    assert "demo api key: widgets" in again.log()
    status, page, _ = Client(again.http).request("GET", "/embed/poll?channel=poll1")
    assert status == 200 and '"apiKey":"widgets"' in page


def test_keys_set_refuses_a_limit_its_variable_refuses(tmp_path: Path) -> None:
    """`keys set` checks a limit as its environment variable is checked: a frame limit of 0
    would close every member of the app with 4009 at its first frame."""
    c8ws("keys", "create", "--name", "quiz", "--data-dir", str(tmp_path))
    for flags, said in ((["--max-frame-bytes", "0"], "--max-frame-bytes must be at least 1"),
                        (["--msg-rate", "-1"], "--msg-rate must not be negative")):
        refused = subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "set", "--name", "quiz", *flags,
             "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and said in refused.stderr
    c8ws("keys", "set", "--name", "quiz", "--max-frame-bytes", "1", "--data-dir", str(tmp_path))
    put_back = c8ws("keys", "set", "--name", "quiz", "--max-frame-bytes", "default",
                    "--msg-rate", "5", "--data-dir", str(tmp_path))
    assert put_back.stdout == "msg_rate: 5.0\n"  # the frame limit is the server's again


@pytest.mark.parametrize("command", [["export", "--channel", "poll1"], ["keys", "list"],
                                     ["keys", "set", "--name", "demo", "--msg-rate", "5"]])
def test_a_data_dir_without_a_database_is_named(tmp_path: Path, command: list[str]) -> None:
    """Commands that work beside a server take a data directory with no database for the
    mistake it is, and make nothing there (they used to create and migrate a new file)."""
    typo = tmp_path / "typo"
    refused = subprocess.run(
        [sys.executable, "-m", "app.cli", *command, "--data-dir", str(typo)],
        capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert f"--data-dir: there is no database at {typo / 'c8ws.sqlite3'}" in refused.stderr
    assert not typo.exists()


def test_keys_create_and_list(tmp_path: Path) -> None:
    """`keys create` prints a key and secret; `keys list` shows the app; duplicates fail."""
    created = c8ws("keys", "create", "--name", "quiz", "--data-dir", str(tmp_path))
    key = next(line.split()[-1] for line in created.stdout.splitlines() if "api key" in line)
    listing = c8ws("keys", "list", "--data-dir", str(tmp_path))
    assert f"quiz\t{key}" in listing.stdout
    again = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--name", "quiz",
         "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
    )
    assert again.returncode == 2
    assert "an app called 'quiz' exists already" in again.stderr
    taken = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--name", "other", "--key", key,
         "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
    )
    assert taken.returncode == 2
    assert f"another app has the api key {key!r}" in taken.stderr


def test_serving_process_settles_its_heap() -> None:
    """The app `serve` and each worker run has start-up's objects frozen out of the collector,
    and full passes rarer; the young and middle thresholds are left as they were."""
    probe = ("import gc; from app.cli import FULL_COLLECTION_THRESHOLD, serving_app; "
             "before = gc.get_threshold(); serving_app(); "
             "print(gc.get_freeze_count(), *gc.get_threshold(), *before[:2], "
             "FULL_COLLECTION_THRESHOLD)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    frozen, young, middle, full, young_before, middle_before, wanted_full = map(
        int, done.stdout.split())
    assert frozen > 10_000  # the modules, the app and its routes
    assert (young, middle, full) == (young_before, middle_before, wanted_full)
    assert full > 10


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_unreachable_broker_stops_serve_with_one_line(tmp_path: Path, workers: str) -> None:
    """`serve` reaches its engines before it serves: Redis not there is one line and status 2
    (it used to log two tracebacks and hang, still listening, with the SQLite store)."""
    env = {**os.environ, "C8WS_DATA_DIR": str(tmp_path), "C8WS_PORT": "0",
           "C8WS_WORKERS": workers, "C8WS_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    failed = subprocess.run([sys.executable, "-m", "app.cli", "serve"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert failed.returncode == 2
    assert failed.stderr.startswith("c8ws: error: C8WS_BROKER_URL: cannot reach Redis")
    assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stdout


def test_a_failed_start_lets_the_store_go(tmp_path: Path) -> None:
    """When starting fails after the store opened (here the broker), the store is closed: its
    threads would keep the process alive."""
    app = create_app({"data_dir": tmp_path},
                     {"C8WS_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})
    before = threading.active_count()
    with pytest.raises(BrokerError):
        asyncio.run(app.startup())
    deadline = time.monotonic() + 5 * UNIT  # a closed connection's thread ends just after
    while threading.active_count() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before


def test_a_file_that_is_no_database_stops_serve_with_one_line(tmp_path: Path) -> None:
    """A data directory whose c8ws.sqlite3 is not a database: one line naming the file and
    status 2 (it was a traceback, and a process that never exited)."""
    (tmp_path / "c8ws.sqlite3").write_bytes(b"not a database, " * 100)
    env = {**os.environ, "C8WS_DATA_DIR": str(tmp_path), "C8WS_PORT": "0"}
    failed = subprocess.run([sys.executable, "-m", "app.cli", "serve"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert failed.returncode == 2
    assert failed.stderr.startswith(f"c8ws: error: SQLite at {tmp_path / 'c8ws.sqlite3'}: ")
    assert failed.stderr.count("\n") == 1
