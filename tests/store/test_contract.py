"""The Store contract, run over every store implementation: appends, ranges, search semantics."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app.errors import NotStored, QueryError, StoreError
from app.protocol import data_from_text, piesocket_frame
from app.query import validate_query
from app.records import Record, record_id
from app.store import create_store
from app.store.base import Store, Widget

pytestmark = pytest.mark.asyncio
_channels = itertools.count()

SEED_QUERY = {
    "sortField": "created", "sortOrder": "asc", "offset": 0, "limit": 10,
    "filters": [{"field": "created", "operator": ">", "value": 1678724096803},
                {"field": "data.score", "operator": ">", "value": 55}],
    "groupBy": "data.liked",
}


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store of each kind: a SQLite file, or a schema of its own in PostgreSQL."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'contract.sqlite3'}"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = create_store(store_url)
    await opened.open()
    yield opened
    await opened.close()


def make_records(channel: str, datas: list[Any], start: int = 1678724097000,
                 **fields: Any) -> list[Record]:
    return [
        Record(app="demo", channel=channel, seq=i + 1, id=record_id(i + 1),
               client_id=fields.get("client_id", f"c{i % 3}"), created=start + i * 1000,
               data=data, username=fields.get("username", f"user{i % 2}"), persistent=True)
        for i, data in enumerate(datas)
    ]


async def fill(store: Store, datas: list[Any], **fields: Any) -> str:
    channel = f"ch{next(_channels)}"
    for record in make_records(channel, datas, **fields):
        await store.append_record(record)
    return channel


async def search(store: Store, channel: str, query: dict[str, Any]) -> dict[str, Any]:
    return await store.search_records("demo", channel, validate_query(query))


def datas_of(result: dict[str, Any]) -> list[Any]:
    return [item["data"] for item in result["items"]]


async def test_append_then_read_range_in_order(store: Store) -> None:
    """Appended records come back from read_range in seq order, after the given position."""
    channel = await fill(store, [{"n": i} for i in range(5)])
    records = await store.read_range("demo", channel, 2, 10)
    assert [r.seq for r in records] == [3, 4, 5]
    assert [r.data for r in records] == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert await store.last_seq("demo", channel) == 5
    assert await store.last_seq("demo", "empty") == 0


async def test_seed_query_with_group_by(store: Store) -> None:
    """The PROTOCOL.md QUERY: created and score filters, then counts of data.liked."""
    datas = [{"score": 60, "liked": True}, {"score": 40, "liked": True},
             {"score": 90, "liked": False}, {"score": 56, "liked": True},
             {"score": 55, "liked": False}, {"score": 99}]
    channel = await fill(store, datas)
    grouped = await search(store, channel, SEED_QUERY)
    assert grouped == {"total": 4, "groups": [{"value": True, "count": 2},
                                              {"value": None, "count": 1},
                                              {"value": False, "count": 1}]}
    items = await search(store, channel, {**SEED_QUERY, "groupBy": None} | {"limit": 2})
    assert items["total"] == 4
    assert datas_of(items) == [{"score": 60, "liked": True}, {"score": 90, "liked": False}]
    assert set(items["items"][0]) == {"id", "client_id", "created", "data", "username", "seq"}


async def test_created_filter_excludes_older_records(store: Store) -> None:
    """Records at or before the `created` bound are not found."""
    channel = await fill(store, [{"score": 80}] * 3, start=1678724095803)
    result = await search(store, channel, {"filters": SEED_QUERY["filters"]})
    assert result["total"] == 1


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([{"field": "data.v", "operator": "=", "value": 1}], [1, 1.0]),
        ([{"field": "data.v", "operator": "=", "value": "1"}], ["1"]),
        ([{"field": "data.v", "operator": "=", "value": True}], [True]),
        ([{"field": "data.v", "operator": "=", "value": None}], [None]),
        ([{"field": "data.v", "operator": "!=", "value": 1}], ["1", True, None, "abc", "MISSING",
                                                              2.5]),
        ([{"field": "data.v", "operator": ">", "value": 1}], [2.5]),
        ([{"field": "data.v", "operator": ">=", "value": 1}], [1, 1.0, 2.5]),
        ([{"field": "data.v", "operator": "<", "value": 2}], [1, 1.0]),
        ([{"field": "data.v", "operator": "<=", "value": 1}], [1, 1.0]),
        ([{"field": "data.v", "operator": ">", "value": "a"}], ["abc"]),
        ([{"field": "data.v", "operator": "in", "value": [1, "abc", True]}],
         [1, True, "abc", 1.0]),
        ([{"field": "data.v", "operator": "nin", "value": [1, "abc", None]}],
         ["1", True, "MISSING", 2.5]),
        ([{"field": "data.v", "operator": "contains", "value": "b"}], ["abc"]),
        ([{"field": "data.v", "operator": "exists", "value": True}],
         [1, "1", True, None, "abc", 1.0, 2.5]),
        ([{"field": "data.v", "operator": "exists", "value": False}], ["MISSING"]),
    ],
)
async def test_operators_respect_json_types(
    store: Store, filters: list[dict[str, Any]], expected: list[Any],
) -> None:
    """Numbers match numbers, strings strings, true only true; missing paths are not null."""
    values = [1, "1", True, None, "abc", "MISSING", 1.0, 2.5]
    datas = [{} if v == "MISSING" else {"v": v} for v in values]
    channel = await fill(store, datas)
    result = await search(store, channel, {"filters": filters, "limit": 100})
    found = [d.get("v", "MISSING") for d in datas_of(result)]
    assert sorted(map(repr, found)) == sorted(map(repr, expected))
    assert result["total"] == len(expected)


async def test_column_filters_and_sorting(store: Store) -> None:
    """Filters on username/client_id/seq, sort by a data path with seq breaking ties."""
    channel = await fill(store, [{"s": 3}, {"s": 1}, {"s": 3}, {"s": 2}])
    by_user = await search(store, channel, {"filters": [
        {"field": "username", "operator": "=", "value": "user0"}]})
    assert by_user["total"] == 2
    by_seq = await search(store, channel, {"filters": [
        {"field": "seq", "operator": "in", "value": [2, 4]}]})
    assert [item["seq"] for item in by_seq["items"]] == [2, 4]
    desc = await search(store, channel, {"sortField": "data.s", "sortOrder": "desc"})
    assert [(i["data"]["s"], i["seq"]) for i in desc["items"]] == [(3, 3), (3, 1), (2, 4), (1, 2)]
    paged = await search(store, channel, {"sortField": "seq", "offset": 1, "limit": 2})
    assert [i["seq"] for i in paged["items"]] == [2, 3] and paged["total"] == 4


async def test_group_by_keeps_json_types_and_pages(store: Store) -> None:
    """Group values keep their type (1, "1" and true are three groups); offset/limit page them."""
    channel = await fill(store, [{"g": 1}, {"g": "1"}, {"g": True}, {"g": True}, {"g": {"o": 1}},
                                 {}, {"g": None}])
    result = await search(store, channel, {"groupBy": "data.g", "limit": 100})
    groups = {orjsonable(g["value"]): g["count"] for g in result["groups"]}
    assert groups == {"true": 2, "null": 2, "1": 1, '"1"': 1, '{"o":1}': 1}
    assert result["groups"][0] == {"value": None, "count": 2}  # ties: null, numbers, strings
    page = await search(store, channel, {"groupBy": "data.g", "offset": 1, "limit": 1})
    assert page["groups"] == [{"value": True, "count": 2}] and page["total"] == 7
    users = await search(store, channel, {"groupBy": "username"})
    assert users["groups"] == [{"value": "user0", "count": 4}, {"value": "user1", "count": 3}]


def orjsonable(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"filters": [{"field": "data.x') OR 1=1 --", "operator": "=", "value": 1}]},
         "unknown field"),
        ({"filters": [{"field": "data..x", "operator": "=", "value": 1}]}, "unknown field"),
        ({"filters": [{"field": "__proto__", "operator": "=", "value": 1}]}, "unknown field"),
        ({"filters": [{"field": "data.x", "operator": "in", "value": list(range(10_000))}]},
         "at most 100"),
        ({"limit": 0}, "limit"),
        ({"limit": 10**9}, "limit"),
        ({"offset": -1}, "offset"),
        ({"limit": "10"}, "limit"),
        ({"limit": True}, "limit"),
        ({"sortOrder": "sideways"}, "sortOrder"),
        ({"sortField": "password"}, "unknown field"),
        ({"groupBy": "data.a-b"}, "unknown field"),
        ({"colour": "red"}, "colour"),
        ({"filters": [{"field": "data", "operator": "=", "value": 1, "x": 2}]}, "x"),
        ({"filters": [{"field": "data", "operator": "LIKE", "value": 1}]}, "operator"),
        ({"filters": [{"field": "data", "operator": "=", "value": {"a": 1}}]}, "value"),
        ({"filters": [{"field": "data", "operator": "exists", "value": 1}]}, "value"),
        ({"filters": [{"field": "created", "operator": ">", "value": "yesterday"}]}, "created"),
        ({"filters": [{"field": "username", "operator": "=", "value": 5}]}, "username"),
        ({"filters": [{"field": "data.a", "operator": "=", "value": 1}] * 21}, "at most 20"),
        ({"filters": "all"}, "filters"),
        ([], "JSON object"),
        ("QUERY", "JSON object"),
        (None, "JSON object"),
    ],
)
async def test_hostile_queries_are_invalid_and_change_nothing(
    store: Store, query: Any, named: str,
) -> None:
    """Each hostile or malformed QUERY is an invalid_query naming the problem; data survives."""
    channel = await fill(store, [{"x": 1}, {"x": 2}])
    with pytest.raises(QueryError) as caught:
        await search(store, channel, query)
    assert named in caught.value.message
    assert caught.value.code == "invalid_query"
    assert (await search(store, channel, {}))["total"] == 2


async def test_data_path_segments_that_look_dangerous_are_just_keys(store: Store) -> None:
    """`data.__proto__` is a plain JSON key lookup."""
    channel = await fill(store, [{"__proto__": 1}, {"y": 1}])
    result = await search(store, channel, {"filters": [
        {"field": "data.__proto__", "operator": "exists", "value": True}]})
    assert result["total"] == 1


async def test_apps_are_unique_by_name_and_key(store: Store) -> None:
    """An app is found by key and by name; a second app with the same key is refused."""
    created = await store.create_app("quiz", "quizkey", "s" * 24)
    assert await store.app_by_key("quizkey") == created
    assert await store.app_by_name("quiz") == created
    with pytest.raises(StoreError):
        await store.create_app("quiz2", "quizkey", "t" * 24)
    assert [app.name for app in await store.list_apps()] == ["quiz"]


async def test_app_secret_and_settings_are_replaced(store: Store) -> None:
    """A new secret and new settings are what the next lookup returns."""
    created = await store.create_app("quiz", "quizkey", "s" * 24)
    await store.set_app_secret(created.id, "n" * 24)
    await store.set_app_settings(created.id, {"msg_rate": 5.5, "origins": ["https://a.test"]})
    found = await store.app_by_key("quizkey")
    assert found is not None
    assert found.secret == "n" * 24
    assert found.settings == {"msg_rate": 5.5, "origins": ["https://a.test"]}
    assert await store.app_by_name("nobody") is None


async def test_widgets_are_saved_replaced_listed_and_deleted(store: Store) -> None:
    """save_widget creates or replaces by id; widgets list by name; delete says if one was there."""
    await store.save_widget("demo", Widget("w1", "zeta", "<p>", "p{}", "go()"))
    first = await store.save_widget("demo", Widget("w2", "Alpha", "", "", ""))
    replaced = await store.save_widget("demo", Widget("w1", "beta", "<b>", "", ""))
    await store.save_widget("other", Widget("w3", "elsewhere", "", "", ""))
    assert first.updated > 0
    assert [w.name for w in await store.list_widgets("demo")] == ["Alpha", "beta"]
    assert await store.get_widget("demo", "w1") == replaced
    assert await store.get_widget("demo", "w3") is None
    assert await store.delete_widget("demo", "w1") is True
    assert await store.delete_widget("demo", "w1") is False
    assert [w.id for w in await store.list_widgets("demo")] == ["w2"]


async def test_a_failed_batch_stores_none_of_its_records(store: Store) -> None:
    """A batch with a duplicate seq fails whole: every sender gets NotStored, nothing is added."""
    channel = await fill(store, [{"n": 1}])
    duplicate, fresh = make_records(channel, [{"n": "dup"}, {"n": 2}])
    outcomes = await asyncio.gather(store.append_record(duplicate), store.append_record(fresh),
                                    return_exceptions=True)
    assert all(isinstance(outcome, NotStored) for outcome in outcomes)
    assert [r.data for r in await store.read_range("demo", channel, 0, 10)] == [{"n": 1}]
    await store.append_record(fresh)  # the store carries on after a failed batch
    assert await store.last_seq("demo", channel) == 2


async def test_close_flushes_pending_appends_and_reports_commits(store_url: str) -> None:
    """Appends still pending at close are committed; the observer hears every batch."""
    commits: list[int] = []
    opened = create_store(store_url, commit_interval_ms=50,
                          on_commit=lambda size, seconds: commits.append(size))
    await opened.open()
    appends = [opened.append_record(r) for r in make_records("c", [1, 2, 3])]
    await asyncio.sleep(0)  # queued, not yet committed: the committer waits 50 ms
    await opened.close()
    await asyncio.gather(*appends)
    assert sum(commits) == 3
    reopened = create_store(store_url)
    await reopened.open()
    try:
        assert [r.data for r in await reopened.read_range("demo", "c", 0, 10)] == [1, 2, 3]
    finally:
        await reopened.close()


def _votes(count: int) -> list[dict[str, Any]]:
    """Scores alternate 60 and 40 (only 60 passes the seed QUERY); `liked` cycles through true,
    false and missing."""
    return [{"score": 60 if i % 2 == 0 else 40, **({} if i % 3 == 2 else {"liked": i % 3 == 0})}
            for i in range(count)]


def _expected(datas: list[dict[str, Any]]) -> dict[str, Any]:
    """The seed QUERY's groupBy answer, counted here: groups by count descending, then value."""
    liked = [d.get("liked") for d in datas if d["score"] > 55]
    rank = {None: 0, False: 1, True: 2}  # SQLite's order: null, then false (0), then true (1)
    values = sorted(set(liked), key=lambda v: (-liked.count(v), rank[v]))
    return {"total": len(liked),
            "groups": [{"value": v, "count": liked.count(v)} for v in values][:10]}


async def test_repeated_searches_count_records_added_since(store: Store) -> None:
    """A search repeated after more appends answers as a first search would, its total and
    groups including the new records, also one whose seq is below what was counted before."""
    channel = f"ch{next(_channels)}"
    datas = _votes(30)
    records = make_records(channel, datas)
    late = records.pop(6)  # seq 7 arrives after seqs up to 20 were searched
    for record in records[:19]:
        await store.append_record(record)
    stored = [r.data for r in records[:19]]
    assert await search(store, channel, SEED_QUERY) == _expected(stored)
    items = await search(store, channel, {**SEED_QUERY, "groupBy": None})
    assert items["total"] == _expected(stored)["total"]

    for batch in (records[19:], [late]):
        for record in batch:
            await store.append_record(record)
        stored += [r.data for r in batch]
        assert await search(store, channel, SEED_QUERY) == _expected(stored)
        items = await search(store, channel, {**SEED_QUERY, "groupBy": None})
        assert items["total"] == _expected(stored)["total"]
    assert _expected(stored) == _expected(datas)
    other = await search(store, channel, {**SEED_QUERY, "filters": SEED_QUERY["filters"][:1]})
    assert other["total"] == 30


@pytest.mark.parametrize("limit", ["groups", "characters"])
async def test_group_by_with_more_groups_than_are_kept(
        store: Store, monkeypatch: pytest.MonkeyPatch, limit: str) -> None:
    """A groupBy with more distinct values (or longer ones) than a search keeps is paged and
    totalled exactly, within and past the groups it counted, before and after more appends."""
    if limit == "groups":
        monkeypatch.setattr("app.store.search.MAX_GROUPS", 3)
    else:
        monkeypatch.setattr("app.store.search.MAX_CARRIED_CHARS", 20)
    channel = f"ch{next(_channels)}"
    records = make_records(channel, [{"n": i % 5} for i in range(13)])
    for record in records[:10]:
        await store.append_record(record)
    near, far = {"groupBy": "data.n", "offset": 1, "limit": 2}, {"groupBy": "data.n", "offset": 3}
    for _ in range(2):
        assert await search(store, channel, near) == {
            "total": 10, "groups": [{"value": 1, "count": 2}, {"value": 2, "count": 2}]}
        assert await search(store, channel, far) == {
            "total": 10, "groups": [{"value": 3, "count": 2}, {"value": 4, "count": 2}]}
    for record in records[10:]:
        await store.append_record(record)
    assert await search(store, channel, near) == {
        "total": 13, "groups": [{"value": 1, "count": 3}, {"value": 2, "count": 3}]}
    assert await search(store, channel, far) == {
        "total": 13, "groups": [{"value": 3, "count": 2}, {"value": 4, "count": 2}]}


async def test_a_cancelled_search_leaves_searching_working(store: Store) -> None:
    """Searches cancelled at any point (their client went away) do not break the next one."""
    channel = await fill(store, _votes(12))
    for ticks in range(8):
        cancelled = asyncio.create_task(search(store, channel, SEED_QUERY))
        for _ in range(ticks):
            await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        assert await search(store, channel, SEED_QUERY) == _expected(_votes(12))


async def test_piesocket_frames_come_back_byte_for_byte(store: Store, store_url: str) -> None:
    """A relayed frame is read back exactly as it was sent, whether the store kept its text or
    (SQLite, when the text is exactly what its data turns back into) only the data."""
    texts = ['{"a":1}', '"hello"', "hello", '{"a": 1}', "1.0", "[1,2]", '{"b":[true,null]}']
    records = [replace(record, text=text, data=data_from_text(text)) for record, text
               in zip(make_records("frames", [None] * len(texts)), texts, strict=True)]
    for record in records:
        await store.append_record(record)
    stored = await store.read_range("demo", "frames", 0, 100)
    assert [piesocket_frame(record) for record in stored] == texts
    if not store_url.startswith("postgresql"):  # SQLite: the canonical ones are not kept twice
        with contextlib.closing(sqlite3.connect(store_url.removeprefix("sqlite:///"))) as db:
            kept = [row[0] for row in db.execute(
                "SELECT text FROM records JOIN channels ON channels.id = records.channel_id "
                "WHERE channels.name = 'frames' ORDER BY seq")]
        assert kept == [None, '"hello"', None, '{"a": 1}', None, None, None]
