"""SQLite and PostgreSQL answer every QUERY alike: the same records, groups, order and types."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.errors import QueryError
from app.query import validate_query
from app.records import Record, record_id
from app.store import create_store
from app.store.base import Store

pytestmark = pytest.mark.asyncio

# Values chosen to meet at type boundaries: 1 / 1.0 / "1" / true, null / missing, "" / 0 / false,
# bytewise string order ("B" < "a" < "é"), objects and arrays, big integers.
SCALARS: list[Any] = [0, 1, -1, 1.0, 2.5, -0.5, 1e-05, 10**15, 2**62, True, False, None, "", "a",
                      "abc", "B", "b", "é", "1", "true", "null", "a b", "{\"o\":1}"]
VALUES: list[Any] = [*SCALARS, [], [1], [1, "a"], {}, {"o": 1}, {"o": [1, 2]}, {"w": 1},
                     {"w": "a"}, {"w": True}, {"w": None}, {"0": 1}]
FIELDS = ["data", "data.v", "data.v.w", "data.v.0", "data.w", "data.missing", "id", "seq",
          "created", "client_id", "username"]
OPERATORS = ["=", "!=", ">", ">=", "<", "<=", "in", "nin", "contains", "exists"]
USERNAMES = [None, "alice", "Bob", "bob", "é"]


def _datas(rng: random.Random) -> list[Any]:
    datas: list[Any] = [{"v": value} for value in VALUES] + [{}, {"w": 1}, 5, "x", [1, 2], None]
    datas += [{"v": rng.choice(VALUES), "w": rng.choice(SCALARS)} for _ in range(60)]
    return datas


def _records(rng: random.Random, channel: str) -> list[Record]:
    return [
        Record(app="demo", channel=channel, seq=i + 1, id=record_id(i + 1),
               client_id=rng.choice(["c0", "c1", "C2"]), created=1_678_724_097_000 + i * 7 % 50,
               data=data, username=rng.choice(USERNAMES), persistent=True)
        for i, data in enumerate(_datas(rng))
    ]


@pytest.fixture
async def stores(tmp_path: Path, postgres_url: str) -> AsyncIterator[list[Store]]:
    opened = [create_store(f"sqlite:///{tmp_path / 'parity.sqlite3'}"), create_store(postgres_url)]
    records = _records(random.Random(7), "mix")
    for store in opened:
        await store.open()
        for record in records:
            await store.append_record(record)
    yield opened
    for store in opened:
        await store.close()


def _value(rng: random.Random, field: str, operator: str) -> Any:
    if operator == "exists":
        return rng.choice([True, False])
    if operator in ("in", "nin"):
        return [_value(rng, field, "=") for _ in range(rng.randint(0, 4))]
    if field in ("seq", "created"):
        pool: list[Any] = [0, 3, 10.5, 1_678_724_097_020, 10**30, None]
    elif field in ("id", "client_id", "username"):
        pool = ["c1", "C2", "bob", "Bob", "b", "", "0000", None]
    else:
        pool = SCALARS
    if operator == "contains":
        pool = ["", "a", "b", "1", "é", "ab"]
    elif operator not in ("=", "!="):
        pool = [v for v in pool if isinstance(v, str | int | float) and not isinstance(v, bool)]
    return rng.choice(pool)


def _query(rng: random.Random) -> dict[str, Any]:
    filters = []
    for _ in range(rng.choice([0, 1, 1, 2])):
        field, operator = rng.choice(FIELDS), rng.choice(OPERATORS)
        filters.append({"field": field, "operator": operator,
                        "value": _value(rng, field, operator)})
    query: dict[str, Any] = {"filters": filters, "limit": rng.choice([3, 1000]),
                             "offset": rng.choice([0, 0, 2]),
                             "sortField": rng.choice(FIELDS),
                             "sortOrder": rng.choice(["asc", "desc"])}
    if rng.random() < 0.35:
        query["groupBy"] = rng.choice(FIELDS)
    return query


def _canonical(result: Any) -> str:
    # Sorted keys: PostgreSQL's JSONB keeps object keys in its own order; types stay visible.
    return orjson.dumps(result, option=orjson.OPT_SORT_KEYS).decode()


async def _answer(store: Store, query: dict[str, Any]) -> str:
    try:
        return _canonical(await store.search_records("demo", "mix", validate_query(query)))
    except QueryError as error:
        return f"QueryError: {error.message}"


async def test_random_queries_answer_alike(stores: list[Store]) -> None:
    """Hundreds of seeded random QUERYs: SQLite and PostgreSQL return identical JSON."""
    rng = random.Random(20240601)
    for _ in range(600):
        query = _query(rng)
        sqlite, postgres = [await _answer(store, query) for store in stores]
        assert sqlite == postgres, orjson.dumps(query).decode()


async def test_read_range_with_filters_alike(stores: list[Store]) -> None:
    """read_range with filters (the export and replay path) returns the same records."""
    rng = random.Random(99)
    for _ in range(200):
        filters = validate_query(_query(rng) | {"groupBy": None})["filters"]
        after = rng.choice([0, 5, 40])
        found = [await _range(store, after, filters) for store in stores]
        assert found[0] == found[1], filters


async def _range(store: Store, after: int, filters: list[dict[str, Any]]) -> Any:
    try:
        records = await store.read_range("demo", "mix", after, 20, filters)
    except QueryError as error:
        return f"QueryError: {error.message}"
    return [(r.seq, r.id, r.client_id, r.created, r.username, _canonical(r.data)) for r in records]
