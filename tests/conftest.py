"""Fixtures: a shared live server for most tests, a private one for tests that stop it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.live import Server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the whole session; tests isolate themselves by channel name."""
    live = Server(tmp_path_factory.mktemp("shared")).start()
    yield live
    live.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start private servers (with their own settings); all are stopped after the test."""
    started: list[Server] = []

    def make(env: dict[str, str] | None = None, data_dir: Path | None = None) -> Server:
        live = Server(data_dir or tmp_path / "data", env).start()
        started.append(live)
        return live

    yield make
    for live in started:
        live.stop()
