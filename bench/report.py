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

from engines import POSTGRES_SETTINGS
from runs import BROKERS, RunResult
from search_load import SEARCH_INTERVAL, SearchUnderLoad
from servers import HOST, RELEASE_TIMEOUT, ROOT, SERVER_ENV, SERVERS, STORE_FILE, Pins
from tables import (
    GENERATOR_BOUND_PCT,
    GENERATOR_MARK,
    LOADED_RISE_TARGET,
    PERSIST_TARGET,
    SEARCH_TARGETS_MS,
    broker_table,
    idle_table,
    persist_table,
    problems_markdown,
    ratio_table,
    scrub,
    search_load_table,
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


def placement(name: str, pins: Pins) -> str:
    """Where a server configuration ran, in words, for the tables."""
    spec = SERVERS[name]
    if pins[0] is None:
        return "not pinned"
    engines = " and ".join(("redis-server" if e == "redis" else "PostgreSQL")
                           for e in spec.engines)
    if spec.spread:
        return (f"CPUs {spec.cpus(pins)}, not pinned to either (the {spec.workers} workers"
                + (f" and {engines}" if engines else "") + ")")
    return f"CPU {pins[0]}" + (f" (with {engines})" if engines else "")


def fanout_section(results: list[RunResult], args: argparse.Namespace) -> str:
    return f"""## Fan-out: c8ws vs the framework floor and the Node peers

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
- {GENERATOR_MARK} = the load generator used at least {GENERATOR_BOUND_PCT:g} % of its core: the
  one Node process receiving every delivery was (nearly) saturated, so that server may be
  faster than its deliveries/s show; compare such rows by server CPU µs/delivery instead.

{table(results)}
c8ws against each of the others, same scenario, same run (above 1x: c8ws delivers more per
second or per CPU second; for p99, above 1x means c8ws's publish → deliver p99 is longer):

{ratio_table(results)}"""


def broker_section(results: list[RunResult], pins: Pins) -> str:
    names = [name for name in SERVERS if name == "c8ws" or name in BROKERS]
    where = "; ".join(f"**{name}**: {placement(name, pins)}" for name in names)
    return f"""## c8ws on the memory broker vs the redis broker, one and two workers

- The same load as the fan-out table. *c8ws* is the memory-broker row of that table (one
  process), not a separate run. *c8ws-redis* is one `c8ws serve` process with
  `C8WS_BROKER_URL=redis://...` pointing at a `redis-server` the harness starts (no persistence,
  127.0.0.1); *c8ws-redis-2w* is `c8ws serve --workers 2` on the same kind of redis-server: two
  Hypercorn worker processes accept on one socket, so the peers split between them at random
  and every publish reaches the other worker's subscribers through Redis.
- Where they ran: {where}. The generator is pinned to CPU {pins[1]} in every row, so in the
  two-worker row the workers and redis-server share CPU {pins[1]} with it and the kernel moves
  them between the cores as it likes. With only two cores, two workers cannot each have a core
  of their own *and* leave one to the generator: that row measures what the server side gets
  when it may use both cores while the generator is busy on one of them, not a clean "two cores
  for the server" result.
- Server CPU sums every process of the server (the Hypercorn parent and its workers), so
  CPU % can exceed 100; redis-server's CPU is shown apart and is not in µs/delivery.

{broker_table(results, {name: placement(name, pins) for name in names})}"""


def persist_section(results: list[RunResult], args: argparse.Namespace) -> str:
    pg = ", ".join(f"`{k}={v}`" for k, v in POSTGRES_SETTINGS.items())
    return f"""## Persistent publishing on SQLite and PostgreSQL (c8ws only)

- The same closed loop as *fanout N*, in C channels x S subscribers with one publisher per
  channel, each keeping at most the window of messages ahead of its channel's last subscriber,
  for {args.duration:g} s: so publishes/s is the most the server accepted. Each shape runs four
  times on the same server: publishers on a plain URL (nothing is stored), twice with
  `persistent=1` on the publishers' URLs (every message is committed to the store before it is
  delivered; subscribers' URLs are unchanged), then plain again. Target: persistent publishes/s
  at least {PERSIST_TARGET:g}x the non-persistent ones, as the mean of the two persistent runs
  over the mean of the two plain ones (on the first persistent row): one run of a shape varies
  by about 10 % on this machine, and a drift over the four runs weighs the same on both means.
  Shapes: one channel with a few subscribers and 100 channels with one each (issue #3), and the
  largest fan-out of the table above (issue #8, item 4).
- Stores: *SQLite* is c8ws's default (its `{STORE_FILE}` in the data dir: WAL,
  `synchronous=NORMAL`, in a thread of the server process); *PostgreSQL* is `c8ws serve` with
  `C8WS_DATABASE_URL=postgresql://...` pointing at a cluster the harness makes with initdb in a
  temporary directory and starts on 127.0.0.1, pinned to the server's CPU, with its defaults
  except {pg} (the same promise as SQLite's `synchronous=NORMAL`: a crash of the machine may lose
  the last commits, never consistency). Its backends' CPU is shown apart (PostgreSQL CPU %) and
  is not in µs/publish. "PostgreSQL / SQLite" divides the means of persistent publishes/s of
  the same shape.
- Stored: after each run (once the server has closed the peers' sockets) the harness counts
  that run's rows in table `records` of the server's store (sqlite3 on the file, psql on the
  database; each run has its own channel names) and compares them with what the generator
  published.

{persist_table(results)}"""


def idle_section(results: list[RunResult], args: argparse.Namespace) -> str:
    return f"""## Memory per idle connection

- Each server, freshly started (its first run), takes {args.idle:,} WebSocket connections spread
  over {args.idle_channels} channels (socket.io: rooms) that send nothing, held
  {args.idle_hold:g} s after the last one connected. KiB per idle connection = (server RSS with
  them - RSS just before the first connect) / connections. RSS of every server process;
  socket.io connections are engine.io WebSocket connections (no long-polling).

{idle_table(results)}"""


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


def search_load_section(under_load: SearchUnderLoad) -> str:
    target = SEARCH_TARGETS_MS["search seed"]
    return f"""## Search under fan-out load (c8ws only)

- c8ws as in the fan-out table, its SQLite store holding one channel of {under_load.rows:,} vote
  records (filled by `bench/search.py --fill` while the server was stopped), runs the
  *rate* scenario twice: alone, then while a client searches that channel over HTTP
  (`POST /api/channels/big/search`, the seed QUERY) again {SEARCH_INTERVAL * 1000:g} ms after
  each answer. The first search after the start, which counts every match, is made before
  both runs: {under_load.first_ms:,.0f} ms. Targets: search p99 under {target:g} ms, and the
  live traffic's p99 rising by less than {LOADED_RISE_TARGET:.0%}.

{search_load_table(under_load)}"""


def report(results: list[RunResult], searches: list[dict[str, Any]], args: argparse.Namespace,
           pins: Pins, idle_load: float, failures: list[str] | None = None,
           elapsed_s: float | None = None, under_load: SearchUnderLoad | None = None) -> str:
    """The generated part of RESULTS.md (everything above the keep marker)."""
    pinning = (f"every server pinned to CPU {pins[0]} unless its table says otherwise, load "
               f"generator to CPU {pins[1]} (taskset)"
               if pins[0] is not None else "no CPU pinning (taskset or a second CPU missing)")
    sections = [fanout_section(results, args)]
    if any(r.server in BROKERS for r in results):
        sections.append(broker_section(results, pins))
    if any(r.scenario.kind == "persist" for r in results):
        sections.append(persist_section(results, args))
    if any(r.scenario.kind == "idle" for r in results):
        sections.append(idle_section(results, args))
    if searches:
        sections.append(search_section(searches))
    if under_load is not None:
        sections.append(search_load_section(under_load))
    body = "\n".join(sections)
    took = "" if elapsed_s is None else f" in {elapsed_s / 60:.0f} minutes"
    when = f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}{took}"
    failed = "".join(f"\n- a run failed: {scrub(line.split(' | at ', 1)[0])}"
                     for line in failures or [])
    return f"""# Benchmarks: fan-out vs the framework floor and Node peers, brokers, stores, search

Generated by `make bench` (`bench/fanout.py`) on {when}.

- Machine: {machine()}; {pinning}. Background load before the run: {idle_load:.0f} % of one
  core{" (busy: expect noisy numbers)" if idle_load > BUSY_PCT else ""}.
- Servers, each one process on one core unless its table says otherwise, plain `ws://` on
  {HOST}:
  - **c8ws** at {revision()} (`c8ws serve`, SQLite store, memory broker; environment
    {", ".join(f"{k}={v}" for k, v in {**SERVER_ENV, **dict(args.env)}.items())}; everything
    else default); *c8ws-redis*, *c8ws-redis-2w* and *c8ws-postgres* are the same with another
    broker or store (their sections say how).
  - **floor** (`bench/floor_app.py`): the same PieSocket relay as a minimal Quart app on
    Hypercorn, one `asyncio.Queue` and writer task per connection, `await websocket.send(msg)`.
  - **ws** (`bench/peers/ws_server.js`): Node, the `ws` package's plain broadcast (a loop of
    `client.send(data)` over the channel's other members), the same relay semantics.
  - **socket.io** (`bench/peers/socketio_server.js`): Node, socket.io 4 with rooms, a client's
    `message` event re-emitted to its room (`socket.to(room).emit`), WebSocket transport only.
  - Versions of the Node packages: `bench/peers/package.json` (exact pins).
- Load: `bench/peers/loadgen.js` (Node; `ws` for the PieSocket-style servers, socket.io-client
  for socket.io), every peer in one process; 100-byte JSON text messages carrying a sequence
  number and the send time (socket.io wraps them in its event envelope);
  permessage-deflate {"on" if args.deflate else "off"}.
- Server CPU is utime + stime from /proc between the generator's start and stop marks (measured
  phase only: connects excluded); CPU % is of one core, in brackets the kernel's (stime) share
  of it. Generator CPU % is the Node process's own `process.cpuUsage()` over the same phase:
  well below 100 % means the generator was not the bottleneck. Other CPU % is what the rest of
  the machine used meanwhile (/proc/stat busy time minus server, its engine and generator): if
  it is high, something else competed for the two cores and latencies are noisy. RSS is the
  server's after the run (peak so far).
- Each server runs its scenarios in turn; between runs the harness waits (up to
  {RELEASE_TIMEOUT:.0f} s) until the server has closed every peer connection, so runs never
  overlap.{failed}

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
