"""Fan-out benchmark: c8ws against the framework floor (bench/floor_app.py) and two Node peers
(the `ws` package's plain broadcast and socket.io 4 rooms, bench/peers/), same load, same box;
c8ws on the memory broker vs the redis broker with one and two workers; persistent vs
non-persistent publishing on SQLite and PostgreSQL; memory per idle connection; and search
latency over 1,000,000 records.

Why a floor: raw numbers depend on the box; the ratio to the plainest relay one can write on the
same stack (Quart + Hypercorn, a queue and a writer task per connection) shows what c8ws's own
features cost, or save, per delivered frame. The Node peers show what the same relay costs on
stacks known to be fast.

For each server configuration: start the engines it needs (bench/engines.py: a redis-server, a
PostgreSQL cluster made by initdb, each in a temporary directory on 127.0.0.1), start the server
pinned to CPU 0 (the two-worker configuration and its redis-server may use both CPUs), run the
Node load generator (bench/peers/loadgen.js) pinned to CPU 1 for each scenario, sample the
server's processes' CPU time and RSS from /proc at the generator's start/stop marks, stop the
server and its engines. The persistent-publishing scenarios run on c8ws with each store, and the
records each stored are counted in the store. Then bench/search.py times the seed QUERY (pinned
to CPU 0, no server running), bench/search_load.py times it again over HTTP while c8ws serves
the rate scenario, and c8ws is profiled in the largest fan-out with
bench/profile_server.py (`--no-profile` skips it). Finally bench/RESULTS.md is written and the
tables printed. Run from the repo root: `.venv/bin/python bench/fanout.py` (`--duration 3` for a
quick look, `--servers c8ws,ws` for some servers only).

Modules: servers.py (configurations, processes, /proc sampling), engines.py (redis-server and
PostgreSQL), runs.py (scenarios, generator and search runs), search_load.py (search under
load), profiling.py (the sampled run and its section), tables.py and report.py (RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from profiling import run_profile
from report import BUSY_PCT, KEEP_MARKER, report, write_results
from runs import RunResult, run_search, run_server, scenarios
from search_load import SearchUnderLoad, run_search_under_load
from servers import BENCH, SERVERS, Pins, background_load, pin_plan

RESULTS = BENCH / "RESULTS.md"


def csv_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument("--fanout", type=csv_ints, default=[100, 1000],
                        help="fan-out sizes, comma-separated (100,1000)")
    parser.add_argument("--window", type=int, default=200, help="publisher in-flight window")
    parser.add_argument("--rate", type=int, default=2000, help="offered msgs/s, 0 to skip")
    parser.add_argument("--rate-channels", type=int, default=100)
    parser.add_argument("--rate-subscribers", type=int, default=10)
    parser.add_argument("--idle", type=int, default=10_000,
                        help="idle connections for memory per connection, 0 to skip (10,000)")
    parser.add_argument("--idle-channels", type=int, default=100,
                        help="channels the idle connections are spread over (100)")
    parser.add_argument("--idle-hold", type=float, default=3.0,
                        help="seconds the idle connections are held after connecting (3)")
    parser.add_argument("--persist", action=argparse.BooleanOptionalAction, default=True,
                        help="persistent vs non-persistent publishing on c8ws (default on)")
    parser.add_argument("--persist-subscribers", type=int, default=10,
                        help="subscribers of the one-channel persistent run (10)")
    parser.add_argument("--persist-channels", type=int, default=100,
                        help="channels of the many-channel persistent run, 1 subscriber each")
    parser.add_argument("--persist-window", type=int, default=10,
                        help="in-flight window per channel of the many-channel run (10)")
    parser.add_argument("--search-rows", type=int, default=1_000_000,
                        help="records for bench/search.py, 0 to skip")
    parser.add_argument("--search-runs", type=int, default=50, help="timed runs per query (50)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"which servers, comma-separated ({','.join(SERVERS)})")
    parser.add_argument("--env", type=env_pair, action="append", default=[],
                        metavar="NAME=VALUE", help="extra server environment, repeatable "
                        "(e.g. C8WS_COMMIT_INTERVAL_MS=0); named in the report")
    parser.add_argument("--deflate", action="store_true", help="negotiate permessage-deflate")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="profile c8ws in the largest fan-out for RESULTS.md (default on)")
    parser.add_argument("--profile-only", action="store_true",
                        help="only the profile: update its section, keep the table")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the markdown report")
    parser.add_argument("--no-write", action="store_true", help="print only, leave the file")
    return parser.parse_args(argv)


def check_setup(servers: list[str]) -> None:
    unknown = [name for name in servers if name not in SERVERS]
    if unknown:
        raise SystemExit(f"unknown servers {unknown}: choose from {', '.join(SERVERS)}")
    for package in ("ws", "socket.io", "socket.io-client"):
        if not (BENCH / "peers" / "node_modules" / package).is_dir():
            raise SystemExit(f"bench/peers/node_modules/{package} missing: "
                             f"run `cd bench/peers && npm install`")
    if shutil.which("node") is None:
        raise SystemExit("node not found: the load generator needs Node 18+")


def profile_only(args: argparse.Namespace, pins: Pins, workdir: Path) -> None:
    """Refresh just the profile section, keeping the table from the last full run."""
    section = run_profile(args, pins, workdir)
    if not args.no_write:
        old = args.output.read_text() if args.output.exists() else ""
        write_results(old.split(KEEP_MARKER, 1)[0].rstrip("\n") + "\n", section, args.output)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began = time.monotonic()
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    check_setup(servers)
    pins = pin_plan()
    idle_load = background_load()
    if idle_load > BUSY_PCT:
        print(f"warning: the machine is already {idle_load:.0f} % busy; numbers will be noisy")
    section: str | None = None
    results: list[RunResult] = []
    searches: list[dict[str, Any]] = []
    under_load: SearchUnderLoad | None = None
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="c8ws-bench-") as tmp:
        if args.profile_only:
            profile_only(args, pins, Path(tmp))
            return
        for name in servers:
            print(f"{name}:", flush=True)
            try:
                results += run_server(SERVERS[name], scenarios(args), pins, Path(tmp),
                                      dict(args.env), failures)
            except RuntimeError as error:  # the server or its engine did not start
                print(f"  FAILED: {error}", flush=True)
                failures.append(f"{name}: {str(error)[:300]}")
        if args.search_rows > 0:
            print(f"search: {args.search_rows:,} records ...", flush=True)
            searches = run_search(args.search_rows, args.search_runs, pins[0])
            if args.rate > 0 and "c8ws" in servers:
                print("search under the rate load ...", flush=True)
                try:
                    under_load = run_search_under_load(args, pins, Path(tmp))
                except RuntimeError as error:
                    print(f"  FAILED: {error}", flush=True)
                    failures.append(f"search under load: {str(error)[:300]}")
        if args.profile and "c8ws" in servers:
            section = run_profile(args, pins, Path(tmp))
    generated = report(results, searches, args, pins, idle_load, failures,
                       time.monotonic() - began, under_load)
    print()
    print(generated)
    if not args.no_write:
        write_results(generated, section, args.output)
        print(f"wrote {os.path.relpath(args.output, Path.cwd())}")


if __name__ == "__main__":
    main()
