"""The markdown tables of RESULTS.md: fan-out (c8ws vs the floor and the Node peers, and the
ratios between them), c8ws on the memory vs the redis broker, persistent vs non-persistent
publishing on SQLite and PostgreSQL, memory per idle connection, search latency alone and under
load; and the list of problems seen during the runs."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from runs import BROKERS, PEERS, STORES, RunResult
from search_load import SearchUnderLoad
from servers import RELEASE_TIMEOUT, ROOT, SERVERS

LINGER_NOTE = 10  # sockets still open 1 s after a run worth a note
GENERATOR_BOUND_PCT = 90.0  # generator CPU % from which the generator, not the server, limits
GENERATOR_MARK = "†"
# The last line of a traceback: `package.module.SomeError: message`.
EXCEPTION_RE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Failure)\b(?::.*)?$")
DIRECTORIES_RE = re.compile(r"(?<![\w.])/(?:[^\s/\"'`|]+/){2,}")


def scrub(text: str) -> str:
    """No machine paths in the report: repository paths relative, other directories dropped."""
    return DIRECTORIES_RE.sub("", text.replace(f"{ROOT}/", ""))
PERSIST_TARGET = 0.7  # persistent publishes/s at least this share of non-persistent
SEARCH_TARGETS_MS = {"search seed": 20.0, "search seed+groupBy": 300.0}  # p99
LOADED_RISE_TARGET = 0.2  # the live traffic's p99 may rise by less than this with searches going


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


def cpu_cells(r: RunResult) -> str:
    """Server CPU % (kernel share), generator CPU %, other CPU %."""
    return (f"{fmt(r.server_cpu_pct)} ({fmt(r.server_sys_pct)}) | "
            f"{fmt(r.gen['generator_cpu_pct'])} | {fmt(r.other_cpu_pct)}")


def generator_bound(r: RunResult) -> bool:
    return float(r.gen.get("generator_cpu_pct", 0)) >= GENERATOR_BOUND_PCT


def deliveries_cell(r: RunResult) -> str:
    """Deliveries/s, marked when the one generator process was (nearly) saturated."""
    return fmt(r.deliveries_per_s) + (f" {GENERATOR_MARK}" if generator_bound(r) else "")


def rss_cell(r: RunResult) -> str:
    return f"{fmt(r.memory.get('VmRSS'))} ({fmt(r.memory.get('VmHWM'))})"


def sorted_runs(runs: list[RunResult]) -> list[RunResult]:
    """In scenario order, then in the order of SERVERS."""
    names = list(dict.fromkeys(r.scenario.name for r in runs))
    order = {name: i for i, name in enumerate(SERVERS)}
    return sorted(runs, key=lambda r: (names.index(r.scenario.name), order[r.server]))


def run_of(result: RunResult, results: list[RunResult], server: str) -> RunResult | None:
    """`server`'s run of the same scenario."""
    return next((r for r in results if r.server == server and r.scenario == result.scenario),
                None)


def ratio(ours: float | None, theirs: float | None) -> str:
    return "-" if not ours or not theirs else f"{ours / theirs:.2f}x"


# --- fan-out: c8ws vs the floor and the peers -----------------------------------------------


def ratio_cell(result: RunResult, results: list[RunResult]) -> str:
    if result.server != "c8ws":
        return ""
    floor = run_of(result, results, "floor")
    return ratio(result.deliveries_per_s, floor.deliveries_per_s if floor else None)


def cpu_ratio_cell(result: RunResult, results: list[RunResult]) -> str:
    """Deliveries per server CPU second, c8ws / floor: less sensitive to a busy machine."""
    if result.server != "c8ws":
        return ""
    floor = run_of(result, results, "floor")
    return ratio(floor.cpu_us_per_delivery if floor else None, result.cpu_us_per_delivery)


def table(results: list[RunResult]) -> str:
    """One row per fan-out scenario and server (c8ws, the floor, the peers), in scenario
    order."""
    head = ("| scenario | server | deliveries/s | c8ws / floor | c8ws / floor per CPU s "
            "| msgs/s published | p50 ms "
            "| p99 ms | lost | out of order | server CPU µs/delivery | server CPU % (kernel share) "
            "| generator CPU % | other CPU % | server RSS MiB (peak) |")
    rows = [head, "| " + " | ".join(["---"] * 2 + ["---:"] * 13) + " |"]
    fanout = [r for r in results if r.scenario.kind == "fanout" and r.server in PEERS]
    for r in sorted_runs(fanout):
        gen = r.gen
        rows.append(
            f"| {r.scenario.name} | {r.server} | {deliveries_cell(r)} | "
            f"{ratio_cell(r, results)} | {cpu_ratio_cell(r, results)} | "
            f"{fmt(gen['messages_per_s'])} | "
            f"{fmt_ms(gen['p50_ms'])} | {fmt_ms(gen['p99_ms'])} | {loss_cell(gen)} | "
            f"{gen['out_of_order']} | {fmt(r.cpu_us_per_delivery, 1)} | {cpu_cells(r)} | "
            f"{rss_cell(r)} |"
        )
    return "\n".join(rows) + "\n"


def ratio_table(results: list[RunResult]) -> str:
    """Per fan-out scenario, c8ws against each other server: deliveries/s, deliveries per
    server CPU second, and p99 (c8ws / other: above 1x c8ws delivers more, or waits longer)."""
    head = ("| scenario | vs | c8ws deliveries/s / theirs | per server CPU s, c8ws / theirs "
            "| c8ws p99 ms | their p99 ms | c8ws p99 / their p99 |")
    rows = [head, "| --- | --- | " + " | ".join(["---:"] * 5) + " |"]
    ours = [r for r in results if r.scenario.kind == "fanout" and r.server == "c8ws"]
    for r in sorted_runs(ours):
        for other in PEERS[1:]:
            theirs = run_of(r, results, other)
            if theirs is None:
                continue
            mark = f" {GENERATOR_MARK}" if generator_bound(r) or generator_bound(theirs) else ""
            rows.append(
                f"| {r.scenario.name} | {other} | "
                f"{ratio(r.deliveries_per_s, theirs.deliveries_per_s)}{mark} | "
                f"{ratio(theirs.cpu_us_per_delivery, r.cpu_us_per_delivery)} | "
                f"{fmt_ms(r.gen['p99_ms'])} | {fmt_ms(theirs.gen['p99_ms'])} | "
                f"{ratio(r.gen['p99_ms'], theirs.gen['p99_ms'])} |"
            )
    return "\n".join(rows) + "\n"


# --- c8ws on the memory vs the redis broker -------------------------------------------------


def broker_table(results: list[RunResult], placement: dict[str, str]) -> str:
    """c8ws on the memory broker (its run in the fan-out table), then on redis with one and with
    two workers, per scenario that ran on redis; `placement` says where each one ran."""
    head = ("| scenario | server | broker, workers | where it ran | deliveries/s "
            "| vs memory, 1 worker | per server CPU s vs memory | p50 ms | p99 ms | lost "
            "| out of order | server CPU µs/delivery (all processes) | server CPU % "
            "| redis-server CPU % | generator CPU % | other CPU % | server RSS MiB (peak) |")
    rows = [head, "| " + " | ".join(["---"] * 4 + ["---:"] * 13) + " |"]
    on_redis = {r.scenario.name for r in results if r.server in BROKERS}
    runs = [r for r in results if r.scenario.kind == "fanout" and r.scenario.name in on_redis
            and r.server in ("c8ws", *BROKERS)]
    for r in sorted_runs(runs):
        memory = run_of(r, results, "c8ws")
        spec = SERVERS[r.server]
        broker = "redis" if "redis" in spec.engines else "memory"
        first = r.server == "c8ws"
        versus = "" if first or memory is None else ratio(r.deliveries_per_s,
                                                           memory.deliveries_per_s)
        per_cpu = "" if first or memory is None else ratio(memory.cpu_us_per_delivery,
                                                            r.cpu_us_per_delivery)
        rows.append(
            f"| {r.scenario.name} | {r.server} | {broker}, {spec.workers} | "
            f"{placement[r.server]} | {deliveries_cell(r)} | "
            f"{versus} | {per_cpu} | "
            f"{fmt_ms(r.gen['p50_ms'])} | {fmt_ms(r.gen['p99_ms'])} | {loss_cell(r.gen)} | "
            f"{r.gen['out_of_order']} | {fmt(r.cpu_us_per_delivery, 1)} | "
            f"{fmt(r.server_cpu_pct)} | {'-' if first else fmt(r.engine_cpu_pct)} | "
            f"{fmt(r.gen['generator_cpu_pct'])} | {fmt(r.other_cpu_pct)} | {rss_cell(r)} |"
        )
    return "\n".join(rows) + "\n"


# --- persistent vs non-persistent publishing ----------------------------------------------------


def mean_publishes(result: RunResult, results: list[RunResult], persistent: bool,
                   server: str | None = None) -> float | None:
    """Mean publishes/s of the runs of `result`'s shape on `server` (its own by default) that
    are persistent or not."""
    rates = [r.publishes_per_s for r in results
             if r.scenario.kind == "persist" and r.scenario.persistent == persistent
             and r.scenario.name == result.scenario.name and r.server == (server or result.server)]
    return sum(rates) / len(rates) if rates else None


def persist_ratio(result: RunResult, results: list[RunResult]) -> float | None:
    """Persistent over plain publishes/s of the shape on the server: the mean of its persistent
    runs over the mean of its plain ones (runs.PERSIST_TURNS)."""
    plain = mean_publishes(result, results, persistent=False)
    persistent = mean_publishes(result, results, persistent=True)
    return persistent / plain if plain and persistent is not None else None


def stored_cell(r: RunResult) -> str:
    """Records found in the store after the run, of those the generator published."""
    sent = int(r.gen["sent"])
    if r.stored is None:
        return f"? of {sent:,}"
    if r.scenario.persistent:
        verdict = "all" if r.stored == sent else f"{sent - r.stored:,} missing"
    else:
        verdict = "none, as expected" if r.stored == 0 else "unexpected"
    return f"{r.stored:,} of {sent:,} ({verdict})"


def store_name(server: str) -> str:
    return "PostgreSQL" if "postgres" in SERVERS[server].engines else "SQLite"


def persist_table(results: list[RunResult]) -> str:
    """Per shape and store, the plain runs then the persistent ones; on the first persistent
    row, the ratio of their means and, for PostgreSQL, its persistent mean over SQLite's."""
    head = ("| channels x subscribers | store | window per channel | publisher URL | publishes/s "
            f"| persistent / non-persistent (target ≥ {PERSIST_TARGET:g}x) "
            "| PostgreSQL / SQLite, persistent | deliveries/s "
            "| p50 ms | p99 ms | lost | stored in `records` of published "
            "| server CPU µs/publish | server CPU % (kernel share) | PostgreSQL CPU % "
            "| generator CPU % | other CPU % |")
    rows = [head, "| " + " | ".join(["---"] * 4 + ["---:"] * 13) + " |"]
    persist = [r for r in results if r.scenario.kind == "persist"]
    shapes = list(dict.fromkeys(r.scenario.name for r in persist))
    order = {name: i for i, name in enumerate(STORES)}
    summarised: set[tuple[str, str]] = set()  # (shape, server) whose ratios are shown
    for r in sorted(persist, key=lambda r: (shapes.index(r.scenario.name), order[r.server],
                                            r.scenario.persistent)):
        share_text = versus = ""
        if r.scenario.persistent and (r.scenario.name, r.server) not in summarised:
            summarised.add((r.scenario.name, r.server))
            share = persist_ratio(r, results)
            share_text = ("-" if share is None else f"{share:.2f}x "
                          f"({'met' if share >= PERSIST_TARGET else '**not met**'})")
            if r.server != "c8ws":
                versus = ratio(mean_publishes(r, results, persistent=True),
                               mean_publishes(r, results, persistent=True, server="c8ws"))
        postgres = store_name(r.server) == "PostgreSQL"
        gen = r.gen
        rows.append(
            f"| {r.scenario.name} | {store_name(r.server)} | {r.scenario.args['window']} | "
            f"{'`persistent=1`' if r.scenario.persistent else 'plain'} | "
            f"{fmt(r.publishes_per_s)} | {share_text} | {versus} | "
            f"{fmt(r.deliveries_per_s)} | "
            f"{fmt_ms(gen['p50_ms'])} | {fmt_ms(gen['p99_ms'])} | {loss_cell(gen)} | "
            f"{stored_cell(r)} | {fmt(r.cpu_us_per_publish, 1)} | "
            f"{fmt(r.server_cpu_pct)} ({fmt(r.server_sys_pct)}) | "
            f"{fmt(r.engine_cpu_pct) if postgres else '-'} | "
            f"{fmt(r.gen['generator_cpu_pct'])} | {fmt(r.other_cpu_pct)} |"
        )
    return "\n".join(rows) + "\n"


# --- memory per idle connection -------------------------------------------------------------


def idle_table(results: list[RunResult]) -> str:
    """One row per server: its memory before and after the idle connections, per connection."""
    head = ("| server | connections held | connect time s | connects/s | RSS before MiB "
            "| RSS with them MiB | KiB per idle connection | c8ws / this |")
    rows = [head, "| --- | " + " | ".join(["---:"] * 7) + " |"]
    idle = sorted_runs([r for r in results if r.scenario.kind == "idle"])
    ours = next((r.kib_per_connection for r in idle if r.server == "c8ws"), None)
    for r in idle:
        gen = r.gen
        held = int(gen.get("open_at_end", gen.get("connections", 0)))
        rows.append(
            f"| {r.server} | {held:,} | {fmt(gen.get('connect_seconds'), 1)} | "
            f"{fmt(gen.get('connects_per_s'))} | {fmt(r.rss_start_mib)} | {fmt(r.rss_stop_mib)} | "
            f"{fmt(r.kib_per_connection, 1)} | "
            f"{'' if r.server == 'c8ws' else ratio(ours, r.kib_per_connection)} |"
        )
    return "\n".join(rows) + "\n"


# --- search -------------------------------------------------------------------------------------


def search_table(searches: list[dict[str, Any]]) -> str:
    """One row per query that bench/search.py timed."""
    head = ("| query | rows in the channel | matching (total) | first search, nothing counted "
            "yet, ms | runs (new records before each) | p50 ms | p99 ms | target p99 | met |")
    rows = [head, "| --- | " + " | ".join(["---:"] * 6) + " | --- | --- |"]
    for s in (s for s in searches if "scenario" in s):
        target = SEARCH_TARGETS_MS.get(s["scenario"])
        met = "-" if target is None else "yes" if s["p99_ms"] < target else "**no**"
        rows.append(
            f"| {s['scenario']} | {s['rows']:,} | {s['total']:,} | {fmt_ms(s['first_ms'])} | "
            f"{s['runs']} ({s['votes_per_run']}) | {fmt_ms(s['p50_ms'])} | "
            f"{fmt_ms(s['p99_ms'])} | {'-' if target is None else f'< {target:g} ms'} | {met} |"
        )
    return "\n".join(rows) + "\n"


def search_load_table(s: SearchUnderLoad) -> str:
    """The rate run alone and with the searcher, then the searches' latencies."""
    target = SEARCH_TARGETS_MS["search seed"]
    rise = s.p99_rise
    rise_text = "-" if rise is None else (
        f"{rise:+.0%} ({'met' if rise < LOADED_RISE_TARGET else '**not met**'})")
    searched = s.search_ms(0.99)
    rows = [
        "| run | deliveries/s | lost | p50 ms | p99 ms | p99 change (target < "
        f"+{LOADED_RISE_TARGET:.0%}) | searches | search p50 ms | search p99 ms (target < "
        f"{target:g}) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r, searches in (("alone", s.alone, None), ("with searches", s.loaded, s)):
        gen = r.gen
        rows.append(
            f"| {r.scenario.name}, {label} | {r.deliveries_per_s:,.0f} | {loss_cell(gen)} "
            f"| {fmt_ms(gen.get('p50_ms'))} | {fmt_ms(gen.get('p99_ms'))} | "
            + ("|  |  | " if searches is None else
               f"{rise_text} | {len(s.latencies_ms)} | {fmt_ms(s.search_p50_ms)} | "
               f"{fmt_ms(searched)} ({'met' if searched < target else '**not met**'})") + " |")
    return "\n".join(rows) + "\n"


# --- problems -----------------------------------------------------------------------------------


def run_notes(r: RunResult) -> list[str]:
    """What the generator, the server's log or its store say went wrong in one run."""
    notes: list[str] = []
    if r.gen.get("closes_by_code"):
        notes.append(f"connections closed by the server before the end of the run: "
                     f"{r.gen['closes_by_code']} (close code: count)")
    if r.lingering > LINGER_NOTE:
        released = (f"all closed after {r.released_after:.0f} s" if r.released_after
                    else f"not all closed after {RELEASE_TIMEOUT:.0f} s")
        notes.append(f"the server still held {r.lingering} peer sockets 1 s after the peers had "
                     f"closed them (CLOSE-WAIT); {released}")
    if r.gen.get("refused"):
        reasons = "; ".join(f"{scrub(reason)} x{count}"
                            for reason, count in r.gen.get("refused_reasons", {}).items())
        notes.append(f"{r.gen['refused']} connections could not be opened ({reasons}); the run "
                     f"went on with the others, and counts deliveries only to those")
    if r.gen.get("foreign_frames"):
        notes.append(f"{r.gen['foreign_frames']} frames that were not benchmark messages "
                     f"(errors or refusals from the server)")
    if r.gen.get("publish_errors"):
        errors = r.gen["publish_errors"]
        notes.append(f"{sum(errors.values())} publishes answered with an error frame {errors} "
                     f"(code: count): refused by the server, so their deliveries count as lost")
    if r.gen.get("gaps"):
        notes.append(f"{r.gen['gaps']} gaps in sequence numbers")
    if not r.gen.get("drained", True):
        notes.append("deliveries still missing after the drain wait")
    if r.stored is not None and r.stored != (int(r.gen["sent"]) if r.scenario.persistent else 0):
        notes.append(f"the store holds {r.stored:,} of its {int(r.gen['sent']):,} published "
                     f"records")
    if r.log_problems:
        notes.append(log_summary(r.log_problems))
    return notes


def log_summary(lines: list[str]) -> str:
    """How many problem lines, and the exceptions they end with (most frequent first)."""
    raised = Counter(scrub(line.strip())[:160] for line in lines
                     if EXCEPTION_RE.match(line.strip()))
    if raised:
        named = "; ".join(f"`{text}` x{count}" for text, count in raised.most_common(3))
        return f"{len(lines)} problem lines in the server log; the exceptions: {named}"
    sample = "; ".join(scrub(line.strip())[:160] for line in lines[:3])
    return f"{len(lines)} problem lines in the server log, e.g. `{sample}`"


def problems_markdown(results: list[RunResult]) -> str:
    """Anything the generator, the server logs or the stores flagged: closes, gaps, errors."""
    notes: list[str] = []
    for r in results:
        where = f"{r.server}, {r.scenario.name}"
        if r.scenario.kind == "idle" and int(r.gen.get("open_at_end", 0)) != int(
                r.gen.get("connections", 0)):
            notes.append(f"- {where}: only {r.gen.get('open_at_end')} of "
                         f"{r.gen.get('connections')} connections were still open at the end")
        if r.scenario.kind == "persist":
            where += " persistent" if r.scenario.persistent else " non-persistent"
        notes += [f"- {where}: {note}" for note in run_notes(r)]
    if not notes:
        return " none: no losses, no reordering, no closes, no errors in the servers' logs.\n"
    return "\n\n" + "\n".join(notes) + "\n"
