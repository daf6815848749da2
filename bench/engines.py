"""The engines some server configurations need: a throwaway redis-server (the broker) and a
throwaway PostgreSQL cluster (the store), each on a free port of 127.0.0.1 in its own temporary
directory, pinned like the server, stopped afterwards. Plain subprocesses and a socket: no test
framework, no client library."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT = 60.0
DATABASE = "c8ws_bench"
# PostgreSQL's durable defaults except that a commit does not wait for its WAL flush: the same
# promise as c8ws's SQLite (WAL, synchronous=NORMAL): a crash of the OS may lose the last
# commits, never consistency.
POSTGRES_SETTINGS = {"synchronous_commit": "off"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def with_cpus(argv: list[str], cpus: str | None) -> list[str]:
    """Prefix `taskset -c CPUS` when there is a CPU list."""
    return argv if cpus is None else ["taskset", "-c", cpus, *argv]


class Engine:
    """A helper process the server talks to: its URL for the server's environment, the pids to
    sample (its CPU counts as the server side's), and a stop that always works."""

    env_name = ""

    @property
    def url(self) -> str:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Redis(Engine):
    """`redis-server` with no persistence (nothing is saved or appended)."""

    env_name = "C8WS_BROKER_URL"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None else []

    def start(self, cpus: str | None) -> None:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server not found: `apt-get install -y redis-server`")
        log = (self.directory / "redis.log").open("wb")
        self.process = subprocess.Popen(
            with_cpus(["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "",
                       "--appendonly", "no", "--dir", str(self.directory)], cpus),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start: "
                                   + (self.directory / "redis.log").read_text()[-2000:])
            time.sleep(0.02)

    def ping(self) -> bool:
        """One inline PING on a fresh connection: True on +PONG."""
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def postgres_bindir() -> Path | None:
    """The newest installed server's binaries (Debian keeps them off PATH)."""

    def version(initdb: str) -> int:
        name = Path(initdb).parents[1].name
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def as_postgres(argv: list[str]) -> list[str]:
    """initdb refuses to run as root: run the cluster as the `postgres` user instead."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class Postgres(Engine):
    """A PostgreSQL cluster made by initdb in a temporary directory (trust authentication on
    127.0.0.1 only) with one database for the server."""

    env_name = "C8WS_DATABASE_URL"

    def __init__(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise SystemExit("PostgreSQL not found: `apt-get install -y postgresql`")
        self.bindir = bindir
        self.port = free_port()
        # Outside the harness's temporary directory, which the postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="c8ws-bench-pg-"))
        self.started = False

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{DATABASE}"

    def pids(self) -> list[int]:
        """The postmaster; its backends are its children (see servers.tree_pids)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            return [int((self.data / "postmaster.pid").read_text().split()[0])]
        return []

    def run(self, argv: list[str], what: str) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=START_TIMEOUT + 30)
        if done.returncode != 0:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL {what} failed ({done.returncode}):\n"
                               f"{done.stdout}{done.stderr}{tail}")
        return done.stdout

    def start(self, cpus: str | None) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.run(as_postgres([str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                              "-U", "postgres", "--no-locale", "-E", "UTF8"]), "initdb")
        settings = " ".join(f"-c {name}={value}" for name, value in POSTGRES_SETTINGS.items())
        options = f"-p {self.port} -k {self.root} -c listen_addresses={HOST} {settings}"
        # The postmaster and every backend it forks inherit pg_ctl's CPU affinity.
        self.run(with_cpus(as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data),
                                        "-l", str(self.root / "log"), "-o", options, "-w",
                                        "-t", str(int(START_TIMEOUT)), "start"]), cpus),
                 "start")
        self.started = True
        self.run([str(self.bindir / "createdb"), "-h", HOST, "-p", str(self.port), "-U",
                  "postgres", DATABASE], "createdb")

    def query(self, sql: str) -> str:
        """One statement through psql; its unaligned output."""
        return self.run([str(self.bindir / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                         "-h", HOST, "-p", str(self.port), "-U", "postgres", "-d", DATABASE,
                         "-c", sql], "query").strip()

    def stored_records(self, channel_prefix: str) -> int:
        """Records in channels named `channel_prefix-*` (the prefix is the harness's own)."""
        pattern = f"{channel_prefix}-"
        if not pattern.replace("-", "").isalnum():
            raise ValueError(f"unexpected channel prefix {channel_prefix!r}")
        return int(self.query(f"SELECT count(*) FROM records "
                              f"WHERE left(channel, {len(pattern)}) = '{pattern}'"))

    def stop(self) -> None:
        if self.started:
            self.started = False
            subprocess.run(as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data),
                                        "stop", "-m", "fast"]),
                           capture_output=True, check=False, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_engines(names: tuple[str, ...], workdir: Path,
                    cpus: str | None) -> Iterator[list[Engine]]:
    """Start the named engines ("redis", "postgres") pinned to `cpus`; always stop them."""
    engines: list[Engine] = []
    try:
        for name in names:
            if name == "redis":
                directory = workdir / "redis"
                directory.mkdir(exist_ok=True)
                redis = Redis(directory)
                engines.append(redis)
                redis.start(cpus)
            elif name == "postgres":
                postgres = Postgres()
                engines.append(postgres)
                postgres.start(cpus)
            else:
                raise ValueError(f"unknown engine {name!r}")
        yield engines
    finally:
        for engine in reversed(engines):
            engine.stop()
