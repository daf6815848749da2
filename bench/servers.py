"""Server processes for the benchmarks: start one pinned to a CPU, wait for its banner, sample
its CPU, memory and sockets from /proc, count what it stored, stop it."""

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds: fields 14 and 15 of /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def memory_mib(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory, MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
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
    """Server CPU (user, system), the whole machine's busy time and the wall clock at one mark
    of the load generator."""

    user: float
    system: float
    busy: float
    wall: float

    @classmethod
    def take(cls, pid: int) -> Sample:
        return cls(*cpu_seconds(pid), machine_busy_seconds(), time.monotonic())


def open_sockets(pid: int) -> int:
    """How many sockets the process has open (listening, self-pipe and peers)."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # fds come and go while we look
                count += os.readlink(fd).startswith("socket:")
    return count


# --- servers ------------------------------------------------------------------------------------


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    """Prefix `taskset -c CPU` when there is a CPU to pin to and taskset exists."""
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def pin_plan() -> Pins:
    """(server CPU, generator CPU): separate cores when there are two and taskset exists."""
    if shutil.which("taskset") and len(os.sched_getaffinity(0)) >= 2:
        server, generator, *_ = sorted(os.sched_getaffinity(0))
        return server, generator
    return None, None


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server; it must print `... listening on http://127.0.0.1:PORT`."""

    name: str
    argv: Callable[[Path], list[str]]


def serve_args(data_dir: Path) -> list[str]:
    return ["serve", "--port", "0", "--data-dir", str(data_dir)]


def c8ws_argv(data_dir: Path) -> list[str]:
    """The installed console script when present (what users run), else the module."""
    script = Path(sys.executable).parent / "c8ws"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    return [*command, *serve_args(data_dir)]


def floor_argv(_data_dir: Path) -> list[str]:
    return [sys.executable, str(BENCH / "floor_app.py"), "--port", "0"]


SERVERS = {"c8ws": ServerSpec("c8ws", c8ws_argv), "floor": ServerSpec("floor", floor_argv)}


@dataclass
class Server:
    """A running server subprocess, its port, its log file and its data dir."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    data_dir: Path
    idle_sockets: int = 0  # sockets open with no peers connected

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_problems(self) -> list[str]:
        """Log lines that say something went wrong (errors, slow members, tracebacks)."""
        text = self.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if LOG_PROBLEM_RE.search(line)]

    def stored_records(self, channel_prefix: str) -> int | None:
        """Records in the server's SQLite file (table `records`) in channels named
        `channel_prefix-*`, counted from outside the server; None without such a file."""
        path = self.data_dir / STORE_FILE
        if not path.exists():
            return None
        pattern = f"{channel_prefix}-"
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
            row = db.execute("SELECT COUNT(*) FROM records WHERE substr(channel, 1, ?) = ?",
                             (len(pattern), pattern)).fetchone()
        return int(row[0])


def wait_ready(process: subprocess.Popen[bytes], log_path: Path) -> int:
    """Poll the log until the banner names the port; bounded by READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        match = READY_RE.search(log_path.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"server did not start:\n{log_path.read_text(errors='replace')[-2000:]}")


@contextlib.contextmanager
def running_server(spec: ServerSpec, cpu: int | None, workdir: Path,
                   extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start a server (with SERVER_ENV and `extra_env` on top of our environment), yield it once
    ready, always stop it (SIGTERM, then SIGKILL)."""
    data_dir = workdir / f"{spec.name}-data"
    data_dir.mkdir(exist_ok=True)
    log_path = workdir / f"{spec.name}.log"
    env = {**os.environ, **SERVER_ENV, **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(pinned(spec.argv(data_dir), cpu), cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        server = Server(spec.name, process, wait_ready(process, log_path), log_path, data_dir)
        server.idle_sockets = open_sockets(process.pid)
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
    lingering = max(0, open_sockets(server.pid) - server.idle_sockets)
    while time.monotonic() - start < RELEASE_TIMEOUT:
        if open_sockets(server.pid) <= server.idle_sockets:
            return lingering, time.monotonic() - start
        time.sleep(0.25)
    return lingering, None
