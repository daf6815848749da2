"""Compile a validated search QUERY into parameterised SQL.

Field paths were checked against the pattern by the schema, and even so reach SQL only as bound
parameters (`json_extract(data, ?)`). Comparisons are type-aware: a number matches numbers, a
string strings, `true` only JSON `true`, so `1` and `true` never meet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from marshmallow import ValidationError

from app.errors import QueryError
from app.schemas import QuerySchema, first_error

COLUMNS = {"id": "text", "seq": "number", "created": "number", "client_id": "text",
           "username": "text"}
NUMBER_TYPES = "('integer','real')"


@dataclass(frozen=True)
class CompiledSearch:
    """SQL and parameters for one search; `groups` tells which result shape to build."""

    sql: str
    params: list[Any]
    count_sql: str
    count_params: list[Any]
    groups: bool


def validate_query(raw: Any) -> dict[str, Any]:
    """The QUERY as the compiler takes it, or `QueryError` naming the first problem."""
    try:
        query: dict[str, Any] = QuerySchema().load(raw if isinstance(raw, dict) else {"": raw})
    except ValidationError as error:
        if not isinstance(raw, dict):
            raise QueryError("QUERY must be a JSON object") from None
        raise QueryError(first_error(error)) from None
    return query


def _json_path(field: str) -> str:
    return "$" + field[4:] if field.startswith("data") else ""


class _Compiler:
    def __init__(self) -> None:
        self.params: list[Any] = []

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return "?"

    def value_expr(self, field: str) -> str:
        if field in COLUMNS:
            return field
        return f"json_extract(data, {self.bind(_json_path(field))})"

    def type_expr(self, field: str) -> str:
        return f"json_type(data, {self.bind(_json_path(field))})"

    def filter(self, field: str, operator: str, value: Any) -> str:
        if field in COLUMNS:
            return self.column_filter(field, operator, value)
        if operator == "exists":
            return f"{self.type_expr(field)} IS {'NOT ' if value else ''}NULL"
        if operator == "!=":
            return f"NOT COALESCE({self.json_equals(field, value)}, 0)"
        if operator == "=":
            return self.json_equals(field, value)
        if operator in ("in", "nin"):
            matches = " OR ".join(self.json_equals(field, item) for item in value) or "0"
            return f"({matches})" if operator == "in" else f"NOT COALESCE(({matches}), 0)"
        if operator == "contains":
            return (f"({self.type_expr(field)} = 'text' AND "
                    f"instr({self.value_expr(field)}, {self.bind(value)}) > 0)")
        kind = f"IN {NUMBER_TYPES}" if not isinstance(value, str) else "= 'text'"
        return (f"({self.type_expr(field)} {kind} AND "
                f"{self.value_expr(field)} {operator} {self.bind(value)})")

    def json_equals(self, field: str, value: Any) -> str:
        if value is None:
            return f"({self.type_expr(field)} = 'null')"
        if isinstance(value, bool):
            return f"({self.type_expr(field)} = '{'true' if value else 'false'}')"
        kind = "= 'text'" if isinstance(value, str) else f"IN {NUMBER_TYPES}"
        return (f"({self.type_expr(field)} {kind} AND "
                f"{self.value_expr(field)} = {self.bind(value)})")

    def column_filter(self, field: str, operator: str, value: Any) -> str:
        kind = COLUMNS[field]
        if operator == "exists":
            return f"({field} IS {'NOT ' if value else ''}NULL)"
        values = value if isinstance(value, list) else [value]
        for item in values:
            if item is None and operator in ("=", "!=", "in", "nin"):
                continue
            if isinstance(item, bool) or (kind == "number") != isinstance(item, int | float):
                wanted = "a number" if kind == "number" else "a string"
                raise QueryError(f"filters: {field} compares with {wanted}, got {item!r}")
        if operator == "contains":
            return f"(instr({field}, {self.bind(value)}) > 0)"
        if operator in ("in", "nin"):
            present = [item for item in value if item is not None]
            parts = []
            if present:
                parts.append(f"{field} IN ({', '.join(self.bind(item) for item in present)})")
            if len(present) < len(value):
                parts.append(f"{field} IS NULL")
            matches = " OR ".join(parts) or "0"
            return f"({matches})" if operator == "in" else f"NOT COALESCE(({matches}), 0)"
        if value is None:
            return f"({field} IS {'NOT ' if operator == '!=' else ''}NULL)"
        if operator == "!=":
            return f"({field} IS NOT {self.bind(value)})"
        return f"({field} {operator} {self.bind(value)})"


def compile_where(app: str, channel: str, filters: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    """The WHERE condition (and its parameters) selecting a channel's records that pass every
    filter."""
    where = _Compiler()
    clauses = ["app = ?", "channel = ?"]
    where.params.extend([app, channel])
    clauses += [where.filter(f["field"], f["operator"], f["value"]) for f in filters]
    return " AND ".join(clauses), where.params


def compile_search(app: str, channel: str, query: dict[str, Any]) -> CompiledSearch:
    """SQL for the items (or groups) page and for the total, over one channel's records."""
    where_sql, where_params = compile_where(app, channel, query["filters"])
    count_sql = f"SELECT COUNT(*) FROM records WHERE {where_sql}"

    select = _Compiler()
    group_by = query["groupBy"]
    if group_by is not None:
        value = select.value_expr(group_by)
        kind = "NULL" if group_by in COLUMNS else f"COALESCE({select.type_expr(group_by)}, 'null')"
        sql = (f"SELECT {value} AS v, {kind} AS t, COUNT(*) AS c FROM records "
               f"WHERE {where_sql} GROUP BY v, t ORDER BY c DESC, v, t LIMIT ? OFFSET ?")
        params = [*select.params, *where_params, query["limit"], query["offset"]]
        return CompiledSearch(sql, params, count_sql, list(where_params), True)

    order = "DESC" if query["sortOrder"] == "desc" else "ASC"
    sort = select.value_expr(query["sortField"])
    sql = (f"SELECT id, client_id, created, data, username, seq FROM records "
           f"WHERE {where_sql} ORDER BY {sort} {order}, seq {order} LIMIT ? OFFSET ?")
    params = [*where_params, *select.params, query["limit"], query["offset"]]
    return CompiledSearch(sql, params, count_sql, list(where_params), False)


def group_value(value: Any, json_type: str | None) -> Any:
    """A grouped value with its JSON type restored (`true` stays `true`, objects parse)."""
    if json_type in ("null", None) and value is None:
        return None
    if json_type == "true":
        return True
    if json_type == "false":
        return False
    if json_type in ("object", "array"):
        return orjson.loads(value)
    return value
