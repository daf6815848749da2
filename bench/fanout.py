"""Fan-out benchmark: c8ws against the framework floor (bench/floor_app.py), same load, same box.

Why a floor: raw numbers depend on the box; the ratio to the plainest relay one can write on the
same stack (Quart + Hypercorn, a queue and a writer task per connection) shows what c8ws's own
features cost, or save, per delivered frame.

For each server: start it pinned to CPU 0, run the Node load generator (bench/peers/loadgen.js)
pinned to CPU 1 for each scenario, sample the server's CPU time and RSS from /proc at the
generator's start/stop marks, stop the server. Then profile c8ws in the largest fan-out with
bench/profile_server.py (`--no-profile` skips it), write bench/RESULTS.md and print the table.
Run from the repo root: `.venv/bin/python bench/fanout.py` (`--duration 3` for a quick look).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LOADGEN = BENCH / "peers" / "loadgen.js"
RESULTS = BENCH / "RESULTS.md"
HOST = "127.0.0.1"
READY_RE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
SAMPLE_HZ = 500  # profile samples per second of server CPU
PROFILE_SECONDS = 6.0  # enough samples (~3,000) for shares to within a percent or so
RELEASE_TIMEOUT = 40.0  # how long a server may take to close its peers' sockets after a run
LINGER_NOTE = 10  # sockets still open 1 s after a run worth a note
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
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
KEEP_MARKER = "<!-- Everything below this line is kept when fanout.py regenerates the file. -->"
PROFILE_BEGIN = "<!-- profile:begin (written by fanout.py --profile) -->"
PROFILE_END = "<!-- profile:end -->"
BUSY_PCT = 20.0  # background load (% of one core) above which the report warns
LOG_PROBLEM_RE = re.compile(r"ERROR|CRITICAL|Traceback|too slow|4008|Exception", re.IGNORECASE)


# --- scenarios and servers ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One load-generator run: a label for the table and the generator's flags."""

    name: str
    args: dict[str, Any]


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


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    """The scenarios asked for on the command line, in table order."""
    common = {"duration": args.duration, "deflate": args.deflate}
    runs = [
        Scenario(f"fanout N={n}", {"mode": "fanout", "subscribers": n, "window": args.window,
                                   **common})
        for n in args.fanout
    ]
    if args.rate > 0:
        runs.append(Scenario(
            f"rate {args.rate_channels}x{args.rate_subscribers} @ {args.rate}/s",
            {"mode": "rate", "channels": args.rate_channels,
             "subscribers": args.rate_subscribers, "rate": args.rate, **common},
        ))
    return runs


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


# --- processes ----------------------------------------------------------------------------------


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    """Prefix `taskset -c CPU` when there is a CPU to pin to and taskset exists."""
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def pin_plan() -> tuple[int | None, int | None]:
    """(server CPU, generator CPU): separate cores when there are two and taskset exists."""
    if shutil.which("taskset") and len(os.sched_getaffinity(0)) >= 2:
        server, generator, *_ = sorted(os.sched_getaffinity(0))
        return server, generator
    return None, None


@dataclass
class Server:
    """A running server subprocess, its port and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    idle_sockets: int = 0  # sockets open with no peers connected

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_problems(self) -> list[str]:
        """Log lines that say something went wrong (errors, slow members, tracebacks)."""
        text = self.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if LOG_PROBLEM_RE.search(line)]


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
def running_server(spec: ServerSpec, cpu: int | None, workdir: Path) -> Iterator[Server]:
    """Start a server, yield it once ready, always stop it (SIGTERM, then SIGKILL)."""
    data_dir = workdir / f"{spec.name}-data"
    data_dir.mkdir(exist_ok=True)
    log_path = workdir / f"{spec.name}.log"
    env = {**os.environ, **SERVER_ENV, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(pinned(spec.argv(data_dir), cpu), cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        server = Server(spec.name, process, wait_ready(process, log_path), log_path)
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


# --- one run ------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What the generator reported plus what /proc said about the server meanwhile."""

    server: str
    scenario: Scenario
    gen: dict[str, Any]
    server_cpu_s: float
    server_sys_s: float
    server_wall_s: float
    machine_busy_s: float
    memory: dict[str, float]
    log_problems: list[str] = field(default_factory=list)
    lingering: int = 0  # peer sockets the server still held 1 s after the peers closed
    released_after: float | None = 0.0  # seconds until it held none (None: not within limit)

    @property
    def deliveries_per_s(self) -> float:
        return float(self.gen["deliveries_per_s"])

    @property
    def cpu_us_per_delivery(self) -> float | None:
        delivered = self.gen["delivered"]
        return 1e6 * self.server_cpu_s / delivered if delivered else None

    @property
    def server_cpu_pct(self) -> float:
        return 100 * self.server_cpu_s / self.server_wall_s if self.server_wall_s else 0.0

    @property
    def other_cpu_pct(self) -> float:
        """CPU used by neither the server nor the generator (other processes, the kernel),
        % of one core: a busy neighbour makes latencies noisy."""
        other = self.machine_busy_s - self.server_cpu_s - float(self.gen["generator_cpu_s"])
        return max(0.0, 100 * other / self.server_wall_s) if self.server_wall_s else 0.0

    @property
    def server_sys_pct(self) -> float:
        """Kernel share of the server's CPU time: mostly socket syscalls."""
        return 100 * self.server_sys_s / self.server_cpu_s if self.server_cpu_s else 0.0


def generator_argv(server: Server, scenario: Scenario, cpu: int | None) -> list[str]:
    argv = ["node", str(LOADGEN), "--url", f"ws://{HOST}:{server.port}/v3"]
    for name, value in scenario.args.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        else:
            argv += [flag, str(value)]
    return pinned(argv, cpu)


def watch_marks(stream: Any, pid: int, marks: dict[str, Sample], other: list[str],
                on_mark: Callable[[str], None] | None) -> None:
    """Read the generator's stderr; sample the server at `mark:start` and `mark:stop`."""
    for raw in stream:
        line = raw.strip()
        if line in ("mark:start", "mark:stop"):
            marks[line] = Sample.take(pid)
            if on_mark is not None:
                on_mark(line)
        elif line:
            other.append(line)


def run_scenario(server: Server, scenario: Scenario, gen_cpu: int | None,
                 on_mark: Callable[[str], None] | None = None) -> RunResult:
    """Run the generator once against `server`; bounded by the generator's own deadline."""
    argv = generator_argv(server, scenario, gen_cpu)
    timeout = 120 + 2 * float(scenario.args["duration"])
    marks: dict[str, Sample] = {}
    errors: list[str] = []
    with subprocess.Popen(argv, cwd=BENCH / "peers", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as gen:
        watcher = threading.Thread(target=watch_marks,
                                   args=(gen.stderr, server.pid, marks, errors, on_mark))
        watcher.start()
        try:  # stdout is one JSON line: it cannot fill the pipe before the generator exits
            gen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            gen.kill()
            gen.wait()
        out = gen.stdout.read() if gen.stdout else ""
        watcher.join(timeout=5)
        memory = memory_mib(server.pid) if server.process.poll() is None else {}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if gen.returncode != 0 or not lines or len(marks) != 2:
        raise RuntimeError(f"load generator failed ({gen.returncode}): {' | '.join(errors)}")
    start, end = marks["mark:start"], marks["mark:stop"]
    cpu = end.user + end.system - start.user - start.system
    return RunResult(server.name, scenario, json.loads(lines[-1]), cpu, end.system - start.system,
                     end.wall - start.wall, end.busy - start.busy, memory)


def open_sockets(pid: int) -> int:
    """How many sockets the process has open (listening, self-pipe and peers)."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # fds come and go while we look
                count += os.readlink(fd).startswith("socket:")
    return count


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


def run_server(spec: ServerSpec, runs: list[Scenario], pins: tuple[int | None, int | None],
               workdir: Path) -> list[RunResult]:
    """All scenarios against one server instance, then its log is checked for problems."""
    results: list[RunResult] = []
    with running_server(spec, pins[0], workdir) as server:
        for scenario in runs:
            print(f"  {spec.name:6} {scenario.name} ...", flush=True, end=" ")
            seen = len(server.log_problems())
            result = run_scenario(server, scenario, pins[1])
            result.lingering, result.released_after = wait_released(server)
            result.log_problems = server.log_problems()[seen:]
            results.append(result)
            print(f"{result.deliveries_per_s:,.0f} deliveries/s", flush=True)
    return results


# --- profile ------------------------------------------------------------------------------------


def profiled_c8ws_argv(output: Path) -> Callable[[Path], list[str]]:
    """c8ws under bench/profile_server.py, which samples between SIGUSR1 and SIGUSR2."""

    def argv(data_dir: Path) -> list[str]:
        return [sys.executable, str(BENCH / "profile_server.py"), "--output", str(output),
                "--hz", str(SAMPLE_HZ), "--", *serve_args(data_dir)]

    return argv


def profile_c8ws(scenario: Scenario, pins: tuple[int | None, int | None],
                 workdir: Path) -> tuple[RunResult, Profile]:
    """Run `scenario` on c8ws, sampling the server's CPU during the measured phase only."""
    out = workdir / "profile.txt"
    spec = ServerSpec("c8ws", profiled_c8ws_argv(out))
    with running_server(spec, pins[0], workdir) as server:
        signals = {"mark:start": signal.SIGUSR1, "mark:stop": signal.SIGUSR2}
        result = run_scenario(server, scenario, pins[1],
                              on_mark=lambda mark: server.process.send_signal(signals[mark]))
    if not out.exists():
        raise RuntimeError("the profiled server wrote no samples")
    return result, Profile.parse(out.read_text())


@dataclass
class Profile:
    """Own and inclusive sample counts per function, from collapsed stacks (the format of
    profile_server.py, py-spy's `--format raw` and flame graph tools)."""

    total: int = 0
    own: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    layers: Counter[str] = field(default_factory=Counter)

    @classmethod
    def parse(cls, text: str) -> Profile:
        """Collapsed stacks, one `frame;frame;... count` per line, outermost frame first."""
        profile = cls()
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [function_name(frame) for frame in stack.split(";")]
            profile.total += int(count)
            profile.own[frames[-1]] += int(count)
            profile.layers[layer(frames[-1])] += int(count)
            for name in set(frames):
                profile.inclusive[name] += int(count)
        return profile


def function_name(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file path without line)`, never an absolute path."""
    match = re.fullmatch(r"(.*) \((.*?)(?::\d+)?\)", frame.strip())
    if not match:
        return frame.strip()
    name, path = match.groups()
    for anchor in ("site-packages/", "/lib/python3."):
        if anchor in path:
            path = path.split(anchor, 1)[1]
            path = path.split("/", 1)[1] if anchor.startswith("/lib") else path
    if path.startswith(str(ROOT)):
        path = os.path.relpath(path, ROOT)
    if path.startswith("/"):
        path = Path(path).name
    return f"{name} ({path})"


SEND_SYSCALL = "_SelectorSocketTransport.write ("


def layer(name: str) -> str:
    """Which part of the stack a function belongs to, by its file."""
    if name.startswith(SEND_SYSCALL):
        return "socket `send()` syscall (own time of asyncio's transport write)"
    path = name.rsplit("(", 1)[-1]
    for prefix in ("app/", "hypercorn/", "wsproto/", "h11/", "quart/", "asyncio/",
                   "werkzeug/", "orjson"):
        if path.startswith(prefix):
            return prefix.rstrip("/")
    return "other (stdlib, native, interpreter)"


def profile_markdown(profile: Profile, result: RunResult, top: int = 15) -> str:
    """The "Where the time goes" section: top functions by own and by inclusive time."""
    pct = 100 / profile.total if profile.total else 0.0
    lines = [
        "## Where the time goes",
        "",
        f"c8ws, {result.scenario.name}, sampled by `bench/profile_server.py` (SIGPROF every "
        f"{1000 / SAMPLE_HZ:g} ms of server CPU, measured phase only: {profile.total} samples, "
        f"so shares are of server CPU). Run under the sampler: {result.deliveries_per_s:,.0f} "
        f"deliveries/s, {fmt(result.cpu_us_per_delivery, 1)} µs server CPU per delivery, "
        f"{fmt(result.server_cpu_pct)} % of a core, of which {fmt(result.server_sys_pct)} % "
        f"kernel time (/proc stime). The own time of asyncio's "
        f"`_SelectorSocketTransport.write` is almost all the `send()` syscall it makes, one "
        f"per frame per subscriber (on loopback that includes the kernel's delivery into the "
        f"receiving socket).",
        "",
        "By layer (own time of the innermost Python frame):",
        "",
        "| layer | % of server CPU |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {n * pct:.1f} |" for name, n in profile.layers.most_common()
              if n * pct >= 0.05]
    lines += ["", f"Top {top} functions by own time:", "",
              "| function | own % | inclusive % |", "| --- | ---: | ---: |"]
    lines += [f"| `{name}` | {n * pct:.1f} | {profile.inclusive[name] * pct:.1f} |"
              for name, n in profile.own.most_common(top)]
    lines += ["", f"Top {top} functions by inclusive time (the call paths that matter):", "",
              "| function | inclusive % |", "| --- | ---: |"]
    lines += [f"| `{name}` | {n * pct:.1f} |"
              for name, n in profile.inclusive.most_common(top + 20)
              if not is_entry_frame(name)][:top]
    return "\n".join(lines) + "\n"


def is_entry_frame(name: str) -> bool:
    """Frames every sample passes through (main, asyncio.run, the loop) say nothing."""
    return name.startswith(("<module>", "main (", "serve (app/cli", "run (asyncio", "Runner.run",
                            "BaseEventLoop.run_", "BaseEventLoop._run_once", "Handle._run"))


# --- report -------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def fmt_ms(value: float | None) -> str:
    """Latencies: two decimals when small, whole milliseconds when large."""
    if value is None:
        return "-"
    return fmt(value, 2 if value < 10 else 1 if value < 100 else 0)


def loss_cell(gen: dict[str, Any]) -> str:
    lost, expected = int(gen["lost"]), int(gen["expected"])
    if lost == 0:
        return "0"
    return f"{lost:,} ({100 * lost / expected:.2f} %)" if expected else f"{lost:,}"


def floor_of(result: RunResult, results: list[RunResult]) -> RunResult | None:
    """The floor's run of the same scenario, for c8ws rows."""
    if result.server != "c8ws":
        return None
    return next((r for r in results if r.server == "floor" and r.scenario == result.scenario),
                None)


def ratio_cell(result: RunResult, results: list[RunResult]) -> str:
    floor = floor_of(result, results)
    if floor is None or not floor.deliveries_per_s:
        return "" if result.server != "c8ws" else "-"
    return f"{result.deliveries_per_s / floor.deliveries_per_s:.2f}x"


def cpu_ratio_cell(result: RunResult, results: list[RunResult]) -> str:
    """Deliveries per server CPU second, c8ws / floor: less sensitive to a busy machine."""
    floor = floor_of(result, results)
    ours = result.cpu_us_per_delivery
    if floor is None or floor.cpu_us_per_delivery is None or not ours:
        return "" if result.server != "c8ws" else "-"
    return f"{floor.cpu_us_per_delivery / ours:.2f}x"


def table(results: list[RunResult]) -> str:
    """One row per scenario and server, c8ws first, in scenario order."""
    head = ("| scenario | server | deliveries/s | c8ws / floor | c8ws / floor per CPU s "
            "| msgs/s published | p50 ms "
            "| p99 ms | lost | out of order | server CPU µs/delivery | server CPU % (kernel share) "
            "| generator CPU % | other CPU % | server RSS MiB (peak) |")
    rows = [head, "| " + " | ".join(["---"] * 2 + ["---:"] * 13) + " |"]
    order = {name: i for i, name in enumerate(SERVERS)}
    ordered = sorted(results, key=lambda r: (scenario_index(r, results), order[r.server]))
    for r in ordered:
        gen = r.gen
        rss = f"{fmt(r.memory.get('VmRSS'))} ({fmt(r.memory.get('VmHWM'))})"
        rows.append(
            f"| {r.scenario.name} | {r.server} | {fmt(r.deliveries_per_s)} | "
            f"{ratio_cell(r, results)} | {cpu_ratio_cell(r, results)} | "
            f"{fmt(gen['messages_per_s'])} | "
            f"{fmt_ms(gen['p50_ms'])} | {fmt_ms(gen['p99_ms'])} | {loss_cell(gen)} | "
            f"{gen['out_of_order']} | {fmt(r.cpu_us_per_delivery, 1)} | "
            f"{fmt(r.server_cpu_pct)} ({fmt(r.server_sys_pct)}) | "
            f"{fmt(gen['generator_cpu_pct'])} | {fmt(r.other_cpu_pct)} | {rss} |"
        )
    return "\n".join(rows) + "\n"


def scenario_index(result: RunResult, results: list[RunResult]) -> int:
    names = list(dict.fromkeys(r.scenario.name for r in results))
    return names.index(result.scenario.name)


def problems_markdown(results: list[RunResult]) -> str:
    """Anything the generator or the server logs flagged: closes, gaps, log errors."""
    notes: list[str] = []
    for r in results:
        where = f"{r.server}, {r.scenario.name}"
        if r.gen.get("closes_by_code"):
            notes.append(f"- {where}: connections closed by the server before the end of the "
                         f"run: {r.gen['closes_by_code']} (close code: count)")
        if r.lingering > LINGER_NOTE:
            released = (f"all closed after {r.released_after:.0f} s" if r.released_after
                        else f"not all closed after {RELEASE_TIMEOUT:.0f} s")
            notes.append(f"- {where}: the server still held {r.lingering} peer sockets 1 s after "
                         f"the peers had closed them (CLOSE-WAIT); {released}")
        if r.gen.get("foreign_frames"):
            notes.append(f"- {where}: {r.gen['foreign_frames']} frames that were not benchmark "
                         f"messages (errors or refusals from the server)")
        if r.gen.get("gaps"):
            notes.append(f"- {where}: {r.gen['gaps']} gaps in sequence numbers")
        if not r.gen.get("drained", True):
            notes.append(f"- {where}: deliveries still missing after the drain wait")
        if r.log_problems:
            sample = "; ".join(line.strip()[:160] for line in r.log_problems[:3])
            notes.append(f"- {where}: {len(r.log_problems)} problem lines in the server log, "
                         f"e.g. `{sample}`")
    if not notes:
        return " none: no losses, no reordering, no closes, no errors in the servers' logs.\n"
    return "\n\n" + "\n".join(notes) + "\n"


def machine() -> str:
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, Node {node.stdout.strip()}")


def background_load(seconds: float = 2.0) -> float:
    """% of one core the machine is busy with before we start: other people's work."""
    busy, wall = machine_busy_seconds(), time.monotonic()
    time.sleep(seconds)
    return 100 * (machine_busy_seconds() - busy) / (time.monotonic() - wall)


def revision() -> str:
    """The commit the server code came from, `-dirty` when the working tree has changes."""
    git = subprocess.run(["git", "describe", "--always", "--dirty", "--exclude", "*"], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    return f"`{git.stdout.strip()}`" if git.returncode == 0 else "an unknown revision"


def report(results: list[RunResult], args: argparse.Namespace,
           pins: tuple[int | None, int | None], idle_load: float) -> str:
    """The generated part of RESULTS.md (everything above the keep marker)."""
    pinning = (f"server pinned to CPU {pins[0]}, load generator to CPU {pins[1]} (taskset)"
               if pins[0] is not None else "no CPU pinning (taskset or a second CPU missing)")
    return f"""# Fan-out benchmark: c8ws vs the framework floor

Generated by `make bench` (`bench/fanout.py`) on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.

- Machine: {machine()}; {pinning}. Background load before the run: {idle_load:.0f} % of one
  core{" (busy: expect noisy numbers)" if idle_load > BUSY_PCT else ""}.
- Servers: **c8ws** at {revision()} (`c8ws serve`, SQLite store, memory broker; environment
  {", ".join(f"{k}={v}" for k, v in SERVER_ENV.items())}) and
  **floor** (`bench/floor_app.py`: the same PieSocket relay as a minimal Quart app, one
  `asyncio.Queue` and writer task per connection, `await websocket.send(msg)`). Both are one
  Hypercorn process on one core, plain `ws://` on 127.0.0.1.
- Load: `bench/peers/loadgen.js` (Node, `ws`), every peer in one process; 100-byte JSON text
  messages carrying a sequence number and the send time;
  permessage-deflate {"on" if args.deflate else "off"}.
  - *fanout N*: N subscribers in one channel, one publisher sending for {args.duration:g} s as fast
    as the server delivers, never more than {args.window} messages ahead of the last-joined
    subscriber. Latency here is mostly that window divided by the rate (Little's law), so the
    number that matters is deliveries/s.
  - *rate CxS @ R/s*: C channels x S subscribers, one publisher per channel, R messages/s offered
    in total (timer batches every 5 ms) for {args.duration:g} s; latency is publish → deliver.
- deliveries/s = deliveries received / time from the first send to the last delivery (fanout)
  or / the offered duration (rate). Lost = expected - received once deliveries stopped arriving
  for 1 s after sending ended (at most 30 s). Out of order = a subscriber saw a sequence number
  not above the previous one.
- Server CPU is utime + stime from /proc between the generator's start and stop marks (measured
  phase only: connects excluded); CPU % is of one core, in brackets the kernel's (stime) share
  of it. Generator CPU % is the Node process's own `process.cpuUsage()` over the same phase:
  well below 100 % means the generator was not the bottleneck. Other CPU % is what the rest of
  the machine used meanwhile (/proc/stat busy time minus server and generator): if it is high,
  something else competed for the two cores and latencies are noisy. RSS is the server's after
  the run (peak so far). "c8ws / floor per CPU s" compares deliveries per second of server CPU
  (floor's µs/delivery / c8ws's), which holds up better than deliveries/s on a busy machine.
- Each server runs the scenarios in turn; between runs the harness waits (up to
  {RELEASE_TIMEOUT:.0f} s) until the server has closed every peer socket, so runs never overlap.

{table(results)}
Problems seen during the runs:{problems_markdown(results)}
"""


def write_results(generated: str, profile_section: str | None, path: Path) -> None:
    """Replace the generated part; keep what follows the keep marker; update the profile block."""
    kept = ""
    if path.exists():
        old = path.read_text()
        if KEEP_MARKER in old:
            kept = old.split(KEEP_MARKER, 1)[1].lstrip("\n")
    if profile_section is not None:
        block = f"{PROFILE_BEGIN}\n{profile_section}{PROFILE_END}\n"
        if PROFILE_BEGIN in kept and PROFILE_END in kept:
            before, rest = kept.split(PROFILE_BEGIN, 1)
            kept = before + block + rest.split(PROFILE_END, 1)[1].lstrip("\n")
        else:
            kept = block + ("\n" + kept if kept else "")
    path.write_text(f"{generated}\n{KEEP_MARKER}\n\n{kept}")


# --- main ---------------------------------------------------------------------------------------


def csv_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument("--fanout", type=csv_ints, default=[100, 1000],
                        help="fan-out sizes, comma-separated (100,1000)")
    parser.add_argument("--window", type=int, default=200, help="publisher in-flight window")
    parser.add_argument("--rate", type=int, default=2000, help="offered msgs/s, 0 to skip")
    parser.add_argument("--rate-channels", type=int, default=100)
    parser.add_argument("--rate-subscribers", type=int, default=10)
    parser.add_argument("--servers", default="c8ws,floor", help="which servers (c8ws,floor)")
    parser.add_argument("--deflate", action="store_true", help="negotiate permessage-deflate")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="profile c8ws in the largest fan-out for RESULTS.md (default on)")
    parser.add_argument("--profile-only", action="store_true",
                        help="only the profile: update its section, keep the table")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the markdown report")
    parser.add_argument("--no-write", action="store_true", help="print only, leave the file")
    return parser.parse_args(argv)


def check_setup() -> None:
    if not (BENCH / "peers" / "node_modules" / "ws").is_dir():
        raise SystemExit("bench/peers/node_modules missing: run `cd bench/peers && npm install`")
    if shutil.which("node") is None:
        raise SystemExit("node not found: the load generator needs Node 18+")


def run_profile(args: argparse.Namespace, pins: tuple[int | None, int | None],
                workdir: Path) -> str:
    n = max(args.fanout, default=1000)
    duration = min(args.duration, PROFILE_SECONDS)
    scenario = Scenario(f"fanout N={n}", {"mode": "fanout", "subscribers": n,
                                          "window": args.window, "duration": duration,
                                          "deflate": args.deflate})
    print(f"  c8ws   {scenario.name} under the sampler ...", flush=True)
    result, profile = profile_c8ws(scenario, pins, workdir)
    section = profile_markdown(profile, result)
    print(section)
    return section


def profile_only(args: argparse.Namespace, pins: tuple[int | None, int | None],
                 workdir: Path) -> None:
    """Refresh just the profile section, keeping the table from the last full run."""
    section = run_profile(args, pins, workdir)
    if not args.no_write:
        old = args.output.read_text() if args.output.exists() else ""
        write_results(old.split(KEEP_MARKER, 1)[0].rstrip("\n") + "\n", section, args.output)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_setup()
    pins = pin_plan()
    idle_load = background_load()
    if idle_load > BUSY_PCT:
        print(f"warning: the machine is already {idle_load:.0f} % busy; numbers will be noisy")
    section: str | None = None
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="c8ws-bench-") as tmp:
        if args.profile_only:
            profile_only(args, pins, Path(tmp))
            return
        for name in args.servers.split(","):
            print(f"{name}:", flush=True)
            results += run_server(SERVERS[name], scenarios(args), pins, Path(tmp))
        if args.profile and "c8ws" in args.servers.split(","):
            section = run_profile(args, pins, Path(tmp))
    generated = report(results, args, pins, idle_load)
    print()
    print(generated)
    if not args.no_write:
        write_results(generated, section, args.output)
        print(f"wrote {os.path.relpath(args.output, Path.cwd())}")


if __name__ == "__main__":
    main()
