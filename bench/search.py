"""Search latency over one channel of 1,000,000 stored records, through the real SQLite store.

Run by `make bench` (bench/fanout.py runs it after the fan-out); prints one JSON line for the
fill, then one per query, and leaves the table to `bench/report.py`. Each query is timed once on
a store that has counted nothing yet (`first_ms`: every match is counted), then `--runs` times
with `--votes` new records appended through the store before each run, as a live poll receives
them while its widgets keep searching (the store counts only what was added since). p99 is the
nearest rank, so with fewer than 100 runs it is the slowest run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from app.query import validate_query
from app.records import Record, record_id
from app.store.sqlite import SqliteStore

SEED_QUERY: dict[str, Any] = {
    "sortField": "created", "sortOrder": "asc", "offset": 0, "limit": 10,
    "filters": [{"field": "created", "operator": ">", "value": 1678724096803},
                {"field": "data.score", "operator": ">", "value": 55}],
}
QUERIES = (("seed", SEED_QUERY), ("seed+groupBy", {**SEED_QUERY, "groupBy": "data.liked"}))
START = 1_700_000_000_000


def votes(seqs: Iterator[int]) -> Iterator[Record]:
    """Vote records of channel `big`: score 0-100 uniform, liked 60 % true."""
    rng = random.Random(1)
    for seq in seqs:
        yield Record(app="demo", channel="big", seq=seq, id=record_id(seq),
                     client_id=f"c{seq % 500}", created=START + seq * 10,
                     username=f"user{seq % 50}", persistent=True,
                     data={"score": rng.randint(0, 100), "liked": rng.random() < 0.6})


def fill(path: Path, rows: int) -> None:
    """Bulk-load `rows` vote records, as many commits of the store's writer would leave them."""
    db = sqlite3.connect(path)
    db.execute("INSERT INTO channels (app, name, records) VALUES ('demo', 'big', ?) "
               "ON CONFLICT (app, name) DO UPDATE SET records = records + excluded.records",
               (rows,))
    (channel_id,) = db.execute(
        "SELECT id FROM channels WHERE app = 'demo' AND name = 'big'").fetchone()
    db.executemany(
        "INSERT INTO records (channel_id, seq, id, client_id, created, username, data, text) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
        ((channel_id, r.seq, r.id, r.client_id, r.created, r.username,
          orjson.dumps(r.data).decode()) for r in votes(iter(range(1, rows + 1)))),
    )
    db.commit()
    db.close()


def nearest_rank(ordered: list[float], q: float) -> float:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def measure(path: Path, query: dict[str, Any], runs: int, live: Iterator[Record],
                  votes_per_run: int) -> dict[str, Any]:
    """The first search on a fresh store, then `runs` searches each after new votes."""
    validated = validate_query(query)
    store = SqliteStore(str(path))
    await store.open()
    try:
        began = time.perf_counter()
        await store.search_records("demo", "big", validated)
        first_ms = (time.perf_counter() - began) * 1000
        times = []
        total = 0
        for _ in range(runs):
            for record in itertools.islice(live, votes_per_run):
                await store.append_record(record)
            began = time.perf_counter()
            result = await store.search_records("demo", "big", validated)
            times.append((time.perf_counter() - began) * 1000)
            total = result["total"]
    finally:
        await store.close()
    times.sort()
    return {"runs": runs, "votes_per_run": votes_per_run, "first_ms": first_ms,
            "p50_ms": statistics.median(times), "p99_ms": nearest_rank(times, 0.99),
            "max_ms": times[-1], "total": total}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--votes", type=int, default=20, help="records appended before each run")
    parser.add_argument("--fill", type=Path, metavar="STORE",
                        help="only fill channel `big` of this existing store (a server's, stopped)")
    args = parser.parse_args()
    if args.fill is not None:
        fill(args.fill, args.rows)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "search.sqlite3"
        store = SqliteStore(str(path))
        await store.open()  # creates the tables
        await store.close()
        began = time.perf_counter()
        await asyncio.to_thread(fill, path, args.rows)
        print(json.dumps({"fill_s": round(time.perf_counter() - began, 1), "rows": args.rows}))
        live = votes(itertools.count(args.rows + 1))
        for name, query in QUERIES:
            result = await measure(path, query, args.runs, live, args.votes)
            print(json.dumps({"scenario": f"search {name}", "rows": args.rows, **result}),
                  flush=True)


if __name__ == "__main__":
    asyncio.run(main())
