"""A throwaway PostgreSQL cluster for the store contract suite; each test gets its own schema.

Without PostgreSQL installed the postgres cases are skipped, loudly; under CI=true they fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_missing: list[str] = []


@dataclass(frozen=True)
class Cluster:
    bindir: Path
    port: int
    database: str

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def psql(self, sql: str) -> None:
        subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", "postgres", "-d", self.database, "-c", sql],
            check=True, capture_output=True, text=True,
        )


def _version(initdb: str) -> int:
    name = Path(initdb).parents[1].name
    return int(name) if name.isdigit() else 0


def _bindir() -> Path | None:
    """The newest installed server's binaries (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _as_postgres(command: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server as the `postgres` user instead."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(command: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
        pytest.fail(f"PostgreSQL {what} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
                    f"{tail}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """initdb in a temp dir, start on a free port of 127.0.0.1, create a database; stop at the
    end. The data lives outside pytest's tmp dir, which the postgres user cannot enter."""
    bindir = _bindir()
    if bindir is None:
        reason = ("POSTGRESQL IS NOT INSTALLED: the postgres store was NOT tested "
                  "(apt-get install -y postgresql)")
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        _missing.append(reason)
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="c8ws-pg-"))
    data, log = root / "data", root / "log"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    ctl = str(bindir / "pg_ctl")
    started = False
    try:
        _run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U",
                           "postgres", "--no-locale", "-E", "UTF8"]), "initdb")
        port = _free_port()
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        # -w: pg_ctl polls until the server accepts connections, and fails if it dies first.
        _run(_as_postgres([ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                           "start"]), "start", log)
        started = True
        cluster = Cluster(bindir, port, "c8ws_test")
        _run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
              cluster.database], "createdb", log)
        yield cluster
    finally:
        if started:
            subprocess.run(_as_postgres([ctl, "-D", str(data), "stop", "-m", "immediate"]),
                           capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: Cluster) -> Iterator[str]:
    """A store URL whose tables live in a fresh schema, so tests never see each other's rows."""
    schema = f"test_{uuid.uuid4().hex[:16]}"
    postgres_cluster.psql(f"CREATE SCHEMA {schema}")
    yield f"{postgres_cluster.url}?search_path={schema}"
    postgres_cluster.psql(f"DROP SCHEMA {schema} CASCADE")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for reason in dict.fromkeys(_missing):
        terminalreporter.write_line(f"WARNING: {reason}", red=True, bold=True)
