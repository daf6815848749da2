"""RESULTS.md: the generated part (how the runs were made, then the tables) above the keep
marker; what follows the marker (the profile block and hand-written notes) is kept."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from runs import RunResult
from servers import HOST, RELEASE_TIMEOUT, ROOT, SERVER_ENV, STORE_FILE, Pins
from tables import (
    PERSIST_TARGET,
    SEARCH_TARGETS_MS,
    persist_table,
    problems_markdown,
    search_table,
    table,
)

KEEP_MARKER = "<!-- Everything below this line is kept when fanout.py regenerates the file. -->"
PROFILE_BEGIN = "<!-- profile:begin (written by fanout.py --profile) -->"
PROFILE_END = "<!-- profile:end -->"
BUSY_PCT = 20.0  # background load (% of one core) above which the report warns


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


def revision() -> str:
    """The commit the server code came from, `-dirty` when the working tree has changes."""
    git = subprocess.run(["git", "describe", "--always", "--dirty", "--exclude", "*"], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    return f"`{git.stdout.strip()}`" if git.returncode == 0 else "an unknown revision"


def fanout_section(results: list[RunResult], args: argparse.Namespace) -> str:
    return f"""## Fan-out: c8ws vs the framework floor

- *fanout N*: N subscribers in one channel, one publisher sending for {args.duration:g} s as fast
  as the server delivers, never more than {args.window} messages ahead of the last-joined
  subscriber. Latency here is mostly that window divided by the rate (Little's law), so the
  number that matters is deliveries/s.
- *rate CxS @ R/s*: C channels x S subscribers, one publisher per channel, R messages/s offered
  in total (timer batches every 5 ms) for {args.duration:g} s; latency is publish → deliver.
- deliveries/s = deliveries received / time from the first send to the last delivery (fanout)
  or / the offered duration (rate). Lost = expected - received once deliveries stopped arriving
  for 1 s after sending ended (at most 30 s). Out of order = a subscriber saw a sequence number
  not above the previous one. "c8ws / floor per CPU s" compares deliveries per second of server
  CPU (floor's µs/delivery / c8ws's), which holds up better than deliveries/s on a busy machine.

{table(results)}"""


def persist_section(results: list[RunResult], args: argparse.Namespace) -> str:
    return f"""## Persistent publishing (c8ws only)

- The same closed loop as *fanout N*, in C channels x S subscribers with one publisher per
  channel, each keeping at most the window of messages ahead of its channel's last subscriber,
  for {args.duration:g} s: so publishes/s is the most the server accepted. Each shape runs twice
  on the same server: publishers on a plain URL (nothing is stored), then with
  `persistent=1` on the publishers' URLs (every message is committed to SQLite before it is
  delivered; subscribers' URLs are unchanged). Target: persistent publishes/s at least
  {PERSIST_TARGET:g}x the non-persistent ones.
- Stored: after each run (once the server has closed the peers' sockets) the harness counts
  that run's rows in table `records` of the server's `{STORE_FILE}` with sqlite3 (each run has
  its own channel names) and compares them with what the generator published.

{persist_table(results)}"""


def search_section(searches: list[dict[str, Any]]) -> str:
    fill = next((s for s in searches if "fill_s" in s), {})
    targets = ", ".join(f"{name.removeprefix('search ')} p99 < {ms:g} ms"
                        for name, ms in SEARCH_TARGETS_MS.items())
    return f"""## Search over {fill.get("rows", 0):,} stored records

- `bench/search.py`, pinned like the server: fills one channel of a fresh SQLite store with
  {fill.get("rows", 0):,} vote records ({fill.get("fill_s", "?")} s), then runs each query
  through the store's `search_records` (what the socket and HTTP search call): once on a store
  that has counted nothing yet (every match is counted: the first search of a QUERY after a
  start), then `runs` times with new vote records appended through the store before each run,
  as a live poll receives them while its widgets keep searching. A repeated QUERY counts only
  the records added since its last run (app/store/search.py), so its total and groups stay
  exact. p99 is the nearest rank, so with fewer than 100 runs it is the slowest run.
  The seed QUERY filters `created > ...` and `data.score > 55`, sorts by `created`, limit 10;
  seed+groupBy adds `groupBy: data.liked`. Targets: {targets}.

{search_table(searches)}"""


def report(results: list[RunResult], searches: list[dict[str, Any]], args: argparse.Namespace,
           pins: Pins, idle_load: float) -> str:
    """The generated part of RESULTS.md (everything above the keep marker)."""
    pinning = (f"server pinned to CPU {pins[0]}, load generator to CPU {pins[1]} (taskset)"
               if pins[0] is not None else "no CPU pinning (taskset or a second CPU missing)")
    sections = [fanout_section(results, args)]
    if any(r.scenario.kind == "persist" for r in results):
        sections.append(persist_section(results, args))
    if searches:
        sections.append(search_section(searches))
    body = "\n".join(sections)
    return f"""# Benchmarks: fan-out vs the framework floor, persistent publishing, search

Generated by `make bench` (`bench/fanout.py`) on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.

- Machine: {machine()}; {pinning}. Background load before the run: {idle_load:.0f} % of one
  core{" (busy: expect noisy numbers)" if idle_load > BUSY_PCT else ""}.
- Servers: **c8ws** at {revision()} (`c8ws serve`, SQLite store, memory broker; environment
  {", ".join(f"{k}={v}" for k, v in {**SERVER_ENV, **dict(args.env)}.items())}; everything
  else default) and
  **floor** (`bench/floor_app.py`: the same PieSocket relay as a minimal Quart app, one
  `asyncio.Queue` and writer task per connection, `await websocket.send(msg)`). Both are one
  Hypercorn process on one core, plain `ws://` on {HOST}.
- Load: `bench/peers/loadgen.js` (Node, `ws`), every peer in one process; 100-byte JSON text
  messages carrying a sequence number and the send time;
  permessage-deflate {"on" if args.deflate else "off"}.
- Server CPU is utime + stime from /proc between the generator's start and stop marks (measured
  phase only: connects excluded); CPU % is of one core, in brackets the kernel's (stime) share
  of it. Generator CPU % is the Node process's own `process.cpuUsage()` over the same phase:
  well below 100 % means the generator was not the bottleneck. Other CPU % is what the rest of
  the machine used meanwhile (/proc/stat busy time minus server and generator): if it is high,
  something else competed for the two cores and latencies are noisy. RSS is the server's after
  the run (peak so far).
- Each server runs its scenarios in turn; between runs the harness waits (up to
  {RELEASE_TIMEOUT:.0f} s) until the server has closed every peer socket, so runs never overlap.

{body}
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
            after = rest.split(PROFILE_END, 1)[1].lstrip("\n")
            kept = before + block + ("\n" + after if after else "")
        else:
            kept = block + ("\n" + kept if kept else "")
    path.write_text(f"{generated}\n{KEEP_MARKER}\n\n{kept}")
