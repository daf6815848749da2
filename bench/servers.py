"""Server processes for the benchmarks: start one (with the engines it needs) pinned to a CPU,
wait for its banner, sample its CPU, memory and sockets from /proc (all its processes), count
what it stored, stop it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines import Engine, Postgres, running_engines

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "127.0.0.1"
READY_RE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
RELEASE_TIMEOUT = 40.0  # how long a server may take to close its peers' sockets after a run
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STORE_FILE = "c8ws.sqlite3"  # c8ws's SQLite store, in its data dir
# The benchmark measures throughput, not the limits: lift every limit the load would hit (all
# peers share one IP; publishers send far above the default per-member rate). Metering stays on
# (a huge rate rather than 0) so its per-message cost is still counted. Unknown names are ignored
# by older servers.
SERVER_ENV = {
    "C8WS_MAX_QUEUE_BYTES": str(16 * 1024 * 1024),
    "C8WS_MSG_RATE": "1000000",
    "C8WS_MSG_BURST": "1000000",
    "C8WS_MAX_CONNECTIONS_PER_IP": "1000000",
    "C8WS_MAX_CONNECTIONS_PER_APP": "1000000",
    "C8WS_MAX_CHANNELS_PER_APP": "1000000",
}
LOG_PROBLEM_RE = re.compile(r"ERROR|CRITICAL|Traceback|too slow|4008|Exception", re.IGNORECASE)

Pins = tuple[int | None, int | None]  # (server CPU, load generator CPU)


# --- /proc sampling -----------------------------------------------------------------------------


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: fields[1] is the parent, [11] utime, [12] stime."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()


def tree_pids(roots: list[int]) -> list[int]:
    """The processes and all their descendants (a server's workers, a database's backends)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):  # processes come and go
                children.setdefault(int(stat_fields(int(entry.name))[1]), []).append(
                    int(entry.name))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) in seconds, summed over the processes: fields 14 and 15 of
    /proc/PID/stat."""
    user = system = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = stat_fields(pid)
            user += int(fields[11]) / CLOCK_TICKS
            system += int(fields[12]) / CLOCK_TICKS
    return user, system


def memory_mib(pids: list[int]) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory, MiB, summed over the processes."""
    values: dict[str, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    values[name] = values.get(name, 0.0) + int(rest.split()[0]) / 1024
    return values


def machine_busy_seconds() -> float:
    """CPU time all cores spent not idle (first line of /proc/stat), to spot other load."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def background_load(seconds: float = 2.0) -> float:
    """% of one core the machine is busy with before we start: other people's work."""
    busy, wall = machine_busy_seconds(), time.monotonic()
    time.sleep(seconds)
    return 100 * (machine_busy_seconds() - busy) / (time.monotonic() - wall)


@dataclass
class Sample:
    """Server CPU (user, system) and resident memory (MiB), its engines' CPU, the whole
    machine's busy time and the wall clock at one mark of the load generator."""

    user: float
    system: float
    rss: float
    engine: float
    busy: float
    wall: float

    @classmethod
    def take(cls, server: Server) -> Sample:
        pids, engine_pids = server.pids(), server.engine_pids()
        user, system = cpu_seconds(pids)
        engine = sum(cpu_seconds(engine_pids))
        rss = memory_mib(pids).get("VmRSS", 0.0)
        return cls(user, system, rss, engine, machine_busy_seconds(), time.monotonic())


TCP_OPEN_STATES = {"01", "08"}  # ESTABLISHED, CLOSE_WAIT: the server has not closed them yet


def peer_sockets(port: int) -> int:
    """Connections to `port` on this machine that the server side still holds open (from
    /proc/net/tcp: local port `port`, state ESTABLISHED or CLOSE-WAIT). Only the peers'
    connections: a server's own sockets to its redis-server or PostgreSQL don't count."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state = fields[1], fields[3]
                count += int(local.rsplit(":", 1)[1], 16) == port and state in TCP_OPEN_STATES
    return count


# --- servers ------------------------------------------------------------------------------------


def pinned(argv: list[str], cpu: int | str | None) -> list[str]:
    """Prefix `taskset -c CPU` when there is a CPU (or a list, "0,1") to pin to."""
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def pin_plan() -> Pins:
    """(server CPU, generator CPU): separate cores when there are two and taskset exists."""
    if shutil.which("taskset") and len(os.sched_getaffinity(0)) >= 2:
        server, generator, *_ = sorted(os.sched_getaffinity(0))
        return server, generator
    return None, None


def all_cpus() -> str:
    return ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server configuration; it must print `... listening on
    http://127.0.0.1:PORT` (once per worker). `engines` are started first, pinned like the
    server, and their URLs put in its environment; `spread` runs the server and its engines on
    every CPU instead of the server's one; `protocol` is what the load generator speaks."""

    name: str
    argv: Callable[[Path], list[str]]
    env: tuple[tuple[str, str], ...] = ()
    engines: tuple[str, ...] = ()
    workers: int = 1
    spread: bool = False
    protocol: str = "piesocket"

    def cpus(self, pins: Pins) -> str | None:
        """Where the server and its engines run."""
        if pins[0] is None:
            return None
        return all_cpus() if self.spread else str(pins[0])


def serve_args(data_dir: Path) -> list[str]:
    return ["serve", "--port", "0", "--data-dir", str(data_dir)]


def c8ws_argv(data_dir: Path) -> list[str]:
    """The installed console script when present (what users run), else the module."""
    script = Path(sys.executable).parent / "c8ws"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    return [*command, *serve_args(data_dir)]


def c8ws_workers_argv(workers: int) -> Callable[[Path], list[str]]:
    return lambda data_dir: [*c8ws_argv(data_dir), "--workers", str(workers)]


def floor_argv(_data_dir: Path) -> list[str]:
    return [sys.executable, str(BENCH / "floor_app.py"), "--port", "0"]


def node_argv(script: str) -> Callable[[Path], list[str]]:
    return lambda _data_dir: ["node", str(BENCH / "peers" / script), "--port", "0"]


# Table order. c8ws is the default configuration (memory broker, SQLite store, one process).
SERVERS = {spec.name: spec for spec in (
    ServerSpec("c8ws", c8ws_argv),
    ServerSpec("floor", floor_argv),
    ServerSpec("ws", node_argv("ws_server.js")),
    ServerSpec("socket.io", node_argv("socketio_server.js"), protocol="socketio"),
    ServerSpec("c8ws-redis", c8ws_argv, engines=("redis",)),
    ServerSpec("c8ws-redis-2w", c8ws_workers_argv(2), engines=("redis",), workers=2,
               spread=True),
    ServerSpec("c8ws-postgres", c8ws_argv, engines=("postgres",)),
)}


@dataclass
class Server:
    """A running server subprocess, its port, its log file and its data dir."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    data_dir: Path
    protocol: str = "piesocket"
    engines: list[Engine] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self) -> list[int]:
        """The server's processes: the one started and its workers."""
        return tree_pids([self.process.pid])

    def engine_pids(self) -> list[int]:
        return tree_pids([pid for engine in self.engines for pid in engine.pids()])

    def log_problems(self) -> list[str]:
        """Log lines that say something went wrong (errors, slow members, tracebacks)."""
        text = self.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if LOG_PROBLEM_RE.search(line)]

    def stored_records(self, channel_prefix: str) -> int | None:
        """Records in the server's store (table `records`: its PostgreSQL database, else its
        SQLite file) in channels named `channel_prefix-*`, counted from outside the server;
        None without a store."""
        for engine in self.engines:
            if isinstance(engine, Postgres):
                return engine.stored_records(channel_prefix)
        path = self.data_dir / STORE_FILE
        if not path.exists():
            return None
        pattern = f"{channel_prefix}-"
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
            row = db.execute("SELECT COUNT(*) FROM records JOIN channels "
                             "ON channels.id = records.channel_id "
                             "WHERE substr(channels.name, 1, ?) = ?",
                             (len(pattern), pattern)).fetchone()
        return int(row[0])


def wait_ready(process: subprocess.Popen[bytes], log_path: Path, banners: int = 1) -> int:
    """Poll the log until `banners` banners (one per worker) name the port; bounded by
    READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        ports = READY_RE.findall(log_path.read_text(errors="replace"))
        if len(ports) >= banners:
            return int(ports[0])
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"server did not start:\n{log_path.read_text(errors='replace')[-2000:]}")


@contextlib.contextmanager
def running_server(spec: ServerSpec, pins: Pins, workdir: Path,
                   extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start the spec's engines, then the server (with SERVER_ENV, the engines' URLs and
    `extra_env` on top of our environment); yield it once every worker is ready; always stop
    the server (SIGTERM, then SIGKILL), then the engines."""
    slug = re.sub(r"[^a-z0-9]+", "-", spec.name.lower()).strip("-")
    data_dir = workdir / f"{slug}-data"
    data_dir.mkdir(exist_ok=True)
    log_path = workdir / f"{slug}.log"
    cpus = spec.cpus(pins)
    with running_engines(spec.engines, workdir, cpus) as engines:
        env = {**os.environ, **SERVER_ENV, **dict(spec.env),
               **{engine.env_name: engine.url for engine in engines}, **(extra_env or {}),
               "PYTHONUNBUFFERED": "1"}
        with log_path.open("wb") as log:
            process = subprocess.Popen(pinned(spec.argv(data_dir), cpus), cwd=ROOT, env=env,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        try:
            server = Server(spec.name, process, wait_ready(process, log_path, spec.workers),
                            log_path, data_dir, spec.protocol, engines)
            yield server
        finally:
            stop(process)


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


def wait_released(server: Server) -> tuple[int, float | None]:
    """After a run, wait until the server has closed the peers' sockets, so the next run starts
    clean. Returns (peer sockets still open 1 s after the peers left, seconds until none were,
    or None when some were still open after RELEASE_TIMEOUT)."""
    start = time.monotonic()
    time.sleep(1.0)
    lingering = peer_sockets(server.port)
    while time.monotonic() - start < RELEASE_TIMEOUT:
        if peer_sockets(server.port) == 0:
            return lingering, time.monotonic() - start
        time.sleep(0.25)
    return lingering, None
