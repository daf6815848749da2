"""The markdown tables of RESULTS.md: fan-out (c8ws vs floor), persistent vs non-persistent
publishing, search latency; and the list of problems seen during the runs."""

from __future__ import annotations

from typing import Any

from runs import RunResult
from servers import RELEASE_TIMEOUT, SERVERS

LINGER_NOTE = 10  # sockets still open 1 s after a run worth a note
PERSIST_TARGET = 0.7  # persistent publishes/s at least this share of non-persistent
SEARCH_TARGETS_MS = {"search seed": 20.0, "search seed+groupBy": 300.0}  # p99


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


# --- fan-out: c8ws vs floor ---------------------------------------------------------------------


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
    """One row per fan-out scenario and server, c8ws first, in scenario order."""
    head = ("| scenario | server | deliveries/s | c8ws / floor | c8ws / floor per CPU s "
            "| msgs/s published | p50 ms "
            "| p99 ms | lost | out of order | server CPU µs/delivery | server CPU % (kernel share) "
            "| generator CPU % | other CPU % | server RSS MiB (peak) |")
    rows = [head, "| " + " | ".join(["---"] * 2 + ["---:"] * 13) + " |"]
    fanout = [r for r in results if r.scenario.kind == "fanout"]
    names = list(dict.fromkeys(r.scenario.name for r in fanout))
    order = {name: i for i, name in enumerate(SERVERS)}
    for r in sorted(fanout, key=lambda r: (names.index(r.scenario.name), order[r.server])):
        gen = r.gen
        rss = f"{fmt(r.memory.get('VmRSS'))} ({fmt(r.memory.get('VmHWM'))})"
        rows.append(
            f"| {r.scenario.name} | {r.server} | {fmt(r.deliveries_per_s)} | "
            f"{ratio_cell(r, results)} | {cpu_ratio_cell(r, results)} | "
            f"{fmt(gen['messages_per_s'])} | "
            f"{fmt_ms(gen['p50_ms'])} | {fmt_ms(gen['p99_ms'])} | {loss_cell(gen)} | "
            f"{gen['out_of_order']} | {fmt(r.cpu_us_per_delivery, 1)} | {cpu_cells(r)} | {rss} |"
        )
    return "\n".join(rows) + "\n"


# --- persistent vs non-persistent publishing ----------------------------------------------------


def plain_of(result: RunResult, results: list[RunResult]) -> RunResult | None:
    """The non-persistent run of the same shape, for a persistent row."""
    return next((r for r in results if r.scenario.kind == "persist" and not r.scenario.persistent
                 and r.scenario.name == result.scenario.name and r.server == result.server),
                None)


def persist_ratio(result: RunResult, results: list[RunResult]) -> float | None:
    plain = plain_of(result, results) if result.scenario.persistent else None
    if plain is None or not plain.publishes_per_s:
        return None
    return result.publishes_per_s / plain.publishes_per_s


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


def persist_table(results: list[RunResult]) -> str:
    """Per shape, the non-persistent run then the persistent one, with their ratio."""
    head = ("| channels x subscribers | window per channel | publisher URL | publishes/s "
            f"| persistent / non-persistent (target ≥ {PERSIST_TARGET:g}x) | deliveries/s "
            "| p50 ms | p99 ms | lost | stored in `records` of published "
            "| server CPU µs/publish | server CPU % (kernel share) | generator CPU % "
            "| other CPU % |")
    rows = [head, "| " + " | ".join(["---"] * 3 + ["---:"] * 11) + " |"]
    persist = [r for r in results if r.scenario.kind == "persist"]
    for r in sorted(persist, key=lambda r: (persist.index(plain_of(r, results) or r),
                                            r.scenario.persistent)):
        ratio = persist_ratio(r, results)
        ratio_text = ("" if not r.scenario.persistent else "-" if ratio is None else
                      f"{ratio:.2f}x ({'met' if ratio >= PERSIST_TARGET else '**not met**'})")
        gen = r.gen
        rows.append(
            f"| {r.scenario.name} | {r.scenario.args['window']} | "
            f"{'`persistent=1`' if r.scenario.persistent else 'plain'} | "
            f"{fmt(r.publishes_per_s)} | {ratio_text} | {fmt(r.deliveries_per_s)} | "
            f"{fmt_ms(gen['p50_ms'])} | {fmt_ms(gen['p99_ms'])} | {loss_cell(gen)} | "
            f"{stored_cell(r)} | {fmt(r.cpu_us_per_publish, 1)} | {cpu_cells(r)} |"
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
    if r.gen.get("foreign_frames"):
        notes.append(f"{r.gen['foreign_frames']} frames that were not benchmark messages "
                     f"(errors or refusals from the server)")
    if r.gen.get("gaps"):
        notes.append(f"{r.gen['gaps']} gaps in sequence numbers")
    if not r.gen.get("drained", True):
        notes.append("deliveries still missing after the drain wait")
    if r.stored is not None and r.stored != (int(r.gen["sent"]) if r.scenario.persistent else 0):
        notes.append(f"the store holds {r.stored:,} of its {int(r.gen['sent']):,} published "
                     f"records")
    if r.log_problems:
        sample = "; ".join(line.strip()[:160] for line in r.log_problems[:3])
        notes.append(f"{len(r.log_problems)} problem lines in the server log, e.g. `{sample}`")
    return notes


def problems_markdown(results: list[RunResult]) -> str:
    """Anything the generator, the server logs or the stores flagged: closes, gaps, errors."""
    notes: list[str] = []
    for r in results:
        where = f"{r.server}, {r.scenario.name}"
        if r.scenario.kind == "persist":
            where += " persistent" if r.scenario.persistent else " non-persistent"
        notes += [f"- {where}: {note}" for note in run_notes(r)]
    if not notes:
        return " none: no losses, no reordering, no closes, no errors in the servers' logs.\n"
    return "\n\n" + "\n".join(notes) + "\n"
