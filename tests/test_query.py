"""The search compiler: one meaning, two dialects; paths and values only ever as parameters."""

from __future__ import annotations

import re

import pytest

from app.query import (
    POSTGRES,
    SQLITE,
    Dialect,
    compile_count,
    compile_groups,
    compile_page,
    compile_where,
    validate_query,
)

DIALECTS = pytest.mark.parametrize("dialect", [SQLITE, POSTGRES], ids=["sqlite", "postgres"])


def _numbers(dialect: Dialect, sql: str) -> set[int]:
    prefix = re.escape(dialect.placeholder(1).removesuffix("1"))
    return {int(n) for n in re.findall(prefix + r"(\d+)", sql)}


@DIALECTS
def test_paths_and_values_never_reach_the_sql_text(dialect: Dialect) -> None:
    """Every path segment and every value is a bound parameter, whatever the operator."""
    operators = [("=", "needle1"), ("!=", "needle2"), (">", 41), ("in", ["needle3", 7]),
                 ("nin", [None]), ("contains", "needle4"), ("exists", True), ("<=", "needle5")]
    query = validate_query({
        "filters": [{"field": f"data.segment{i}.inner", "operator": op, "value": value}
                    for i, (op, value) in enumerate(operators)],
        "sortField": "data.sortkey", "groupBy": None,
    })
    page = compile_page("appname", "channelname", query, dialect)
    count = compile_count("appname", "channelname", query["filters"], range(4141, 4242), dialect)
    for sql in (page.sql, count.sql):
        for word in ("segment", "inner", "sortkey", "needle", "appname", "channelname", "41"):
            assert word not in sql
    grouping = validate_query({"groupBy": "data.groupkey"})
    carried = '[["groupkey", "text", 41]]'
    for grouped in (compile_page("a", "c", grouping, dialect),
                    compile_groups("a", "c", grouping, range(41, 42), carried, 41, dialect)):
        assert "groupkey" not in grouped.sql and "41" not in grouped.sql


@DIALECTS
def test_placeholders_are_numbered_to_match_the_parameters(dialect: Dialect) -> None:
    """Placeholders run 1..N with N parameters; a path named twice is bound once."""
    query = validate_query({"filters": [
        {"field": "data.x", "operator": ">", "value": 1},
        {"field": "data.x", "operator": "!=", "value": "a"},
        {"field": "created", "operator": "in", "value": [1, 2, None]}],
        "sortField": "data.x", "limit": 5, "offset": 2})
    page = compile_page("a", "c", query, dialect)
    count = compile_count("a", "c", query["filters"], range(3, 9), dialect)
    groups = compile_groups("a", "c", {**query, "groupBy": "data.x"}, range(3, 9), "[]", 7,
                            dialect)
    for statement in (page, count, groups):
        assert _numbers(dialect, statement.sql) == set(range(1, len(statement.params) + 1))
    assert page.params[-2:] == [5, 2]
    assert count.params[2:4] == [3, 9] and groups.params[-2:] == ["[]", 7]
    where, params = compile_where("a", "c", query["filters"], dialect)
    assert params[:2] == ["a", "c"] and f"app = {dialect.placeholder(1)} AND " in where


def test_postgres_walks_object_keys_with_text_parameters() -> None:
    """`data.a.0` is the keys "a" then "0" (never an array index), each a ::text parameter."""
    where, params = compile_where("a", "c", [{"field": "data.a.0", "operator": "exists",
                                              "value": True}], POSTGRES)
    assert "(data -> $3::text -> $4::text) IS NOT NULL" in where
    assert params == ["a", "c", "a", "0"]


def test_postgres_equality_offers_the_gin_index_a_containment() -> None:
    """`=` on a data path adds `data @> {...}` for the jsonb_path_ops index, then checks exactly."""
    where, params = compile_where("a", "c", [{"field": "data.a.b", "operator": "=",
                                              "value": 5}], POSTGRES)
    assert "(data @> $3::jsonb AND ((data -> $4::text -> $5::text) = $6::jsonb))" in where
    assert params == ["a", "c", '{"a":{"b":5}}', "a", "b", "5"]


def test_huge_integers_are_compared_not_crashed_on() -> None:
    """Integers past 64 bits bind as numeric (PostgreSQL) or as a float (SQLite)."""
    filters = [{"field": "seq", "operator": "<", "value": 10**30},
               {"field": "data.n", "operator": ">", "value": -(10**30)}]
    _, pg = compile_where("a", "c", filters, POSTGRES)
    _, lite = compile_where("a", "c", filters, SQLITE)
    assert pg[2:] == [10**30, "n", "-1000000000000000000000000000000"]
    assert lite[2:] == [1e30, "$.n", -1e30]
