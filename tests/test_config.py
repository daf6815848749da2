"""Settings from the environment and the command line; bad values stop start-up in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.config import load_settings
from app.errors import ConfigError


def test_defaults() -> None:
    """With nothing set: loopback, port 8000, SQLite under ./var, demo key `demo`."""
    settings = load_settings({})
    assert (settings.host, settings.port, settings.demo_key) == ("127.0.0.1", 8000, "demo")
    assert settings.store_url == "sqlite:///var/c8ws.sqlite3"


def test_environment_and_overrides() -> None:
    """C8WS_* variables are read; explicit overrides (CLI flags) win."""
    settings = load_settings({"C8WS_PORT": "9001", "C8WS_DATA_DIR": "/srv/x"}, {"port": "9002"})
    assert settings.port == 9002
    assert settings.data_dir == Path("/srv/x")


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"C8WS_PORT": "eighty"}, "C8WS_PORT"),
        ({"C8WS_PORT": "70000"}, "C8WS_PORT"),
        ({"C8WS_MAX_FRAME_BYTES": "-1"}, "C8WS_MAX_FRAME_BYTES"),
        ({"C8WS_CERTFILE": "/nonexistent.pem"}, "C8WS_CERTFILE"),
        ({"C8WS_BROKER_URL": "kafka://x"}, "C8WS_BROKER_URL"),
        ({"C8WS_DATABASE_URL": "mysql://x"}, "C8WS_DATABASE_URL"),
        ({"C8WS_DEMO_KEY": " "}, "C8WS_DEMO_KEY"),
        ({"C8WS_MSG_RATE": "inf"}, "C8WS_MSG_RATE"),  # the c8 welcome carries it as a number
        ({"C8WS_MSG_RATE": "nan"}, "C8WS_MSG_RATE"),
    ],
)
def test_bad_settings_name_the_setting(environ: dict[str, str], named: str) -> None:
    """Each bad value raises ConfigError naming its variable."""
    with pytest.raises(ConfigError, match=named):
        load_settings(environ)


def test_cli_bad_setting_is_one_clear_line(tmp_path: Path) -> None:
    """`c8ws serve` with a bad setting exits 2 with one line naming it, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "nope", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "c8ws: error: --port must be a whole number, got 'nope'"]


def test_workers_need_a_shared_broker() -> None:
    """Several workers on the memory broker are refused with a clear reason."""
    with pytest.raises(ConfigError, match="C8WS_WORKERS: several workers need a shared broker"):
        load_settings({"C8WS_WORKERS": "2"})
    assert load_settings({"C8WS_WORKERS": "2", "C8WS_BROKER_URL": "redis://h:1/0"}).workers == 2
