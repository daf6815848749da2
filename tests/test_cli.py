"""The `c8ws` command: the start-up banner, the demo app's key and secret, and `keys`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.live import Server


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


def test_demo_key_is_configurable(make_server: Callable[..., Server]) -> None:
    """C8WS_DEMO_KEY names the demo app's key at first start."""
    live = make_server({"C8WS_DEMO_KEY": "widgets"})
    assert "demo api key: widgets" in live.log()


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
