"""Search latency over one channel of 1,000,000 stored records, through the real SQLite store.

Run by `make bench` (bench/fanout.py runs it after the fan-out); prints one JSON line for the
fill, then one per query, and leaves the table to `bench/report.py`. Each query runs once to warm
the store's page cache, then `--runs` times; p99 is the nearest rank, so with fewer than 100
runs it is the slowest run. `count_p50_ms` times the query's total (`COUNT(*)`) statement alone
on a plain sqlite3 connection: how much of the latency is counting the matches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from app.query import compile_search, validate_query
from app.store.sqlite import SqliteStore

SEED_QUERY: dict[str, Any] = {
    "sortField": "created", "sortOrder": "asc", "offset": 0, "limit": 10,
    "filters": [{"field": "created", "operator": ">", "value": 1678724096803},
                {"field": "data.score", "operator": ">", "value": 55}],
}
QUERIES = (("seed", SEED_QUERY), ("seed+groupBy", {**SEED_QUERY, "groupBy": "data.liked"}))
COUNT_RUNS = 3


def fill(path: Path, rows: int) -> None:
    """Bulk-load `rows` vote records (score 0-100 uniform, liked 60% true) into channel `big`."""
    rng = random.Random(1)
    start = 1_700_000_000_000
    db = sqlite3.connect(path)
    db.executemany(
        "INSERT INTO records (app, channel, seq, id, client_id, created, username, data, text) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        (("demo", "big", i + 1, f"{i + 1:012d}-bench", f"c{i % 500}", start + i * 10,
          f"user{i % 50}",
          orjson.dumps({"score": rng.randint(0, 100), "liked": rng.random() < 0.6}).decode())
         for i in range(rows)),
    )
    db.commit()
    db.close()


def nearest_rank(ordered: list[float], q: float) -> float:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def count_ms(path: Path, query: dict[str, Any]) -> float:
    """Median time of the query's `COUNT(*)` statement alone, on its own connection."""
    compiled = compile_search("demo", "big", query)
    times = []
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(compiled.count_sql, compiled.count_params).fetchone()  # warm-up
        for _ in range(COUNT_RUNS):
            began = time.perf_counter()
            db.execute(compiled.count_sql, compiled.count_params).fetchone()
            times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


async def measure(store: SqliteStore, query: dict[str, Any], runs: int) -> dict[str, Any]:
    validated = validate_query(query)
    await store.search_records("demo", "big", validated)  # warm-up, not timed
    times = []
    total = 0
    for _ in range(runs):
        began = time.perf_counter()
        result = await store.search_records("demo", "big", validated)
        times.append((time.perf_counter() - began) * 1000)
        total = result["total"]
    times.sort()
    return {"runs": runs, "p50_ms": statistics.median(times), "p99_ms": nearest_rank(times, 0.99),
            "max_ms": times[-1], "total": total}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "search.sqlite3"
        store = SqliteStore(str(path))
        await store.open()
        began = time.perf_counter()
        await asyncio.to_thread(fill, path, args.rows)
        print(json.dumps({"fill_s": round(time.perf_counter() - began, 1), "rows": args.rows}))
        for name, query in QUERIES:
            result = await measure(store, query, args.runs)
            result["count_p50_ms"] = await asyncio.to_thread(count_ms, path,
                                                             validate_query(query))
            print(json.dumps({"scenario": f"search {name}", "rows": args.rows, **result}),
                  flush=True)
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
