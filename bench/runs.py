"""Scenarios and runs: the Node load generator (bench/peers/loadgen.js) against a running
server, with the server's CPU sampled at the generator's marks; and the search benchmark
(bench/search.py) in a subprocess."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers import (
    BENCH,
    HOST,
    ROOT,
    Pins,
    Sample,
    Server,
    ServerSpec,
    memory_mib,
    pinned,
    running_server,
    wait_released,
)

LOADGEN = BENCH / "peers" / "loadgen.js"
SEARCH = BENCH / "search.py"
SEARCH_TIMEOUT = 900.0


PEERS = ("c8ws", "floor", "ws", "socket.io")  # the fan-out table's servers
BROKERS = ("c8ws-redis", "c8ws-redis-2w")  # c8ws on the redis broker, beside c8ws on memory
STORES = ("c8ws", "c8ws-postgres")  # c8ws on SQLite and on PostgreSQL
# Each persistent shape runs plain, persistent, persistent, plain: a machine that speeds up or
# slows down steadily over the four runs weighs the same on both means (tables.persist_ratio).
PERSIST_TURNS = (False, True, True, False)


@dataclass(frozen=True)
class Scenario:
    """One load-generator run: a label for the table, the generator's flags, the servers it runs
    against and which table it belongs to (`fanout`: c8ws vs the floor and the peers, and vs
    itself on the redis broker; `persist`: persistent vs non-persistent publishing, the label
    naming the pair; `idle`: memory per idle connection)."""

    name: str
    args: dict[str, Any]
    servers: tuple[str, ...] = PEERS
    kind: str = "fanout"

    @property
    def persistent(self) -> bool:
        return bool(self.args.get("persistent"))


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    """The scenarios asked for on the command line, in the order each server runs them."""
    common = {"duration": args.duration, "deflate": args.deflate}
    runs = []
    if args.idle > 0:
        runs.append(Scenario(
            f"idle {args.idle:,}",
            {"mode": "idle", "connections": args.idle, "channels": args.idle_channels,
             "duration": args.idle_hold, "settle": 1.0, "deflate": args.deflate},
            kind="idle"))
    largest = max(args.fanout, default=0)
    runs += [
        Scenario(f"fanout N={n}", {"mode": "fanout", "subscribers": n, "window": args.window,
                                   **common},
                 servers=PEERS + (BROKERS if n == largest else ()))
        for n in args.fanout
    ]
    if args.rate > 0:
        runs.append(Scenario(
            f"rate {args.rate_channels}x{args.rate_subscribers} @ {args.rate}/s",
            {"mode": "rate", "channels": args.rate_channels,
             "subscribers": args.rate_subscribers, "rate": args.rate, **common},
            servers=PEERS + BROKERS,
        ))
    if args.persist:
        shapes = [(1, args.persist_subscribers, args.window),
                  (args.persist_channels, 1, args.persist_window)]
        if largest > args.persist_subscribers:  # persistent at the fan-out rate
            shapes.append((1, largest, args.window))
        for channels, subscribers, window in shapes:
            for turn, persistent in enumerate(PERSIST_TURNS, 1):
                prefix = f"persist-{channels}x{subscribers}-{'on' if persistent else 'off'}-{turn}"
                runs.append(Scenario(
                    f"{channels}x{subscribers}",
                    {"mode": "fanout", "channels": channels, "subscribers": subscribers,
                     "window": window, "persistent": persistent, "channel_prefix": prefix,
                     **common},
                    servers=STORES, kind="persist"))
    return runs


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
    engine_cpu_s: float = 0.0  # the server's redis-server or PostgreSQL, same phase
    rss_start_mib: float = 0.0  # the server's resident memory at the generator's marks
    rss_stop_mib: float = 0.0
    log_problems: list[str] = field(default_factory=list)
    lingering: int = 0  # peer sockets the server still held 1 s after the peers closed
    released_after: float | None = 0.0  # seconds until it held none (None: not within limit)
    stored: int | None = None  # records of this run found in the server's store afterwards

    @property
    def deliveries_per_s(self) -> float:
        return float(self.gen["deliveries_per_s"])

    @property
    def publishes_per_s(self) -> float:
        return float(self.gen["messages_per_s"])

    @property
    def cpu_us_per_delivery(self) -> float | None:
        delivered = self.gen["delivered"]
        return 1e6 * self.server_cpu_s / delivered if delivered else None

    @property
    def cpu_us_per_publish(self) -> float | None:
        sent = self.gen["sent"]
        return 1e6 * self.server_cpu_s / sent if sent else None

    @property
    def server_cpu_pct(self) -> float:
        return 100 * self.server_cpu_s / self.server_wall_s if self.server_wall_s else 0.0

    @property
    def engine_cpu_pct(self) -> float:
        return 100 * self.engine_cpu_s / self.server_wall_s if self.server_wall_s else 0.0

    @property
    def other_cpu_pct(self) -> float:
        """CPU used by neither the server, its engine nor the generator (other processes, the
        kernel), % of one core: a busy neighbour makes latencies noisy."""
        other = (self.machine_busy_s - self.server_cpu_s - self.engine_cpu_s
                 - float(self.gen["generator_cpu_s"]))
        return max(0.0, 100 * other / self.server_wall_s) if self.server_wall_s else 0.0

    @property
    def kib_per_connection(self) -> float | None:
        """Idle runs: the server's resident memory grown per connection held."""
        connections = int(self.gen.get("connections", 0))
        if not connections:
            return None
        return 1024 * (self.rss_stop_mib - self.rss_start_mib) / connections

    @property
    def server_sys_pct(self) -> float:
        """Kernel share of the server's CPU time: mostly socket syscalls."""
        return 100 * self.server_sys_s / self.server_cpu_s if self.server_cpu_s else 0.0


def generator_argv(server: Server, scenario: Scenario, cpu: int | None) -> list[str]:
    url = (f"http://{HOST}:{server.port}" if server.protocol == "socketio"
           else f"ws://{HOST}:{server.port}/v3")
    argv = ["node", str(LOADGEN), "--protocol", server.protocol, "--url", url]
    for name, value in scenario.args.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        else:
            argv += [flag, str(value)]
    return pinned(argv, cpu)


def watch_marks(stream: Any, server: Server, marks: dict[str, Sample], other: list[str],
                on_mark: Callable[[str], None] | None) -> None:
    """Read the generator's stderr; sample the server at `mark:start` and `mark:stop`."""
    for raw in stream:
        line = raw.strip()
        if line in ("mark:start", "mark:stop"):
            marks[line] = Sample.take(server)
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
                                   args=(gen.stderr, server, marks, errors, on_mark))
        watcher.start()
        try:  # stdout is one JSON line: it cannot fill the pipe before the generator exits
            gen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            gen.kill()
            gen.wait()
        out = gen.stdout.read() if gen.stdout else ""
        watcher.join(timeout=5)
        memory = memory_mib(server.pids()) if server.process.poll() is None else {}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if gen.returncode != 0 or not lines or len(marks) != 2:
        raise RuntimeError(f"load generator failed ({gen.returncode}): {' | '.join(errors)}")
    start, end = marks["mark:start"], marks["mark:stop"]
    cpu = end.user + end.system - start.user - start.system
    return RunResult(server.name, scenario, json.loads(lines[-1]), cpu, end.system - start.system,
                     end.wall - start.wall, end.busy - start.busy, memory,
                     end.engine - start.engine, start.rss, end.rss)


def run_server(spec: ServerSpec, runs: list[Scenario], pins: Pins, workdir: Path,
               extra_env: dict[str, str] | None = None,
               failures: list[str] | None = None) -> list[RunResult]:
    """The scenarios meant for this server: the idle ones against a fresh instance of it (its
    memory before the connects is the start-up's, and what they leave behind does not weigh on
    the other runs), the others against a second instance. After each run, the records it
    stored are counted (runs with a channel prefix) and its log is checked for problems. A run
    that fails is noted in `failures` (when given) and the next one goes on."""
    mine = [s for s in runs if spec.name in s.servers]
    results: list[RunResult] = []
    for group in ([s for s in mine if s.kind == "idle"], [s for s in mine if s.kind != "idle"]):
        if group:
            results += run_instance(spec, group, pins, workdir, extra_env, failures)
    return results


def run_instance(spec: ServerSpec, runs: list[Scenario], pins: Pins, workdir: Path,
                 extra_env: dict[str, str] | None,
                 failures: list[str] | None) -> list[RunResult]:
    """`runs` in turn against one instance of the server (see run_server)."""
    results: list[RunResult] = []
    with running_server(spec, pins, workdir, extra_env) as server:
        for scenario in runs:
            label = scenario.name + (" persistent" if scenario.persistent else "")
            print(f"  {spec.name:13} {label} ...", flush=True, end=" ")
            seen = len(server.log_problems())
            try:
                result = run_scenario(server, scenario, pins[1])
            except RuntimeError as error:
                if failures is None:
                    raise
                print(f"FAILED: {error}", flush=True)
                failures.append(f"{spec.name}, {label}: {str(error)[:300]}")
                wait_released(server)
                continue
            result.lingering, result.released_after = wait_released(server)
            result.log_problems = server.log_problems()[seen:]
            if "channel_prefix" in scenario.args:
                result.stored = server.stored_records(scenario.args["channel_prefix"])
            results.append(result)
            if scenario.kind == "idle":
                print(f"{result.gen['connections']:,} connections, "
                      f"{result.kib_per_connection or 0:,.1f} KiB each", flush=True)
                continue
            print(f"{result.deliveries_per_s:,.0f} deliveries/s, "
                  f"{result.publishes_per_s:,.0f} publishes/s, p99 {result.gen['p99_ms']} ms"
                  + ("" if result.stored is None else f", {result.stored:,} stored"), flush=True)
    return results


def run_search(rows: int, runs: int, cpu: int | None) -> list[dict[str, Any]]:
    """bench/search.py on the server's CPU: one dict per line it prints (the fill, then one per
    query)."""
    argv = pinned([sys.executable, str(SEARCH), "--rows", str(rows), "--runs", str(runs)], cpu)
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=SEARCH_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"bench/search.py failed ({done.returncode}): {done.stderr[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
