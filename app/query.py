"""Compile a validated search QUERY into parameterised SQL, for SQLite or PostgreSQL.

One compiler decides what each operator means; a `Dialect` only spells it. Field paths were
checked against the pattern by the schema, and even so reach SQL only as bound parameters
(`json_extract(data, ?1)`, `data -> $3::text`). Comparisons are type-aware: a number matches
numbers, a string strings, `true` only JSON `true`, so `1` and `true` never meet.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import orjson
from marshmallow import ValidationError

from app.errors import QueryError
from app.records import Record
from app.schemas import INT64_MAX, QuerySchema, first_error

COLUMNS = {"id": "text", "seq": "number", "created": "number", "client_id": "text",
           "username": "text"}
NUMBER_TYPES = "('integer','real')"
ENCODED = "json"
"""The group type meaning "the value is JSON text": PostgreSQL groups by the value's JSON text."""

_INT64 = range(-(2**63), INT64_MAX + 1)


@dataclass(frozen=True)
class Statement:
    """One SQL statement and its parameters, numbered from 1."""

    sql: str
    params: list[Any]


def validate_query(raw: Any) -> dict[str, Any]:
    """The QUERY as the compiler takes it, or `QueryError` naming the first problem."""
    try:
        query: dict[str, Any] = QuerySchema().load(raw if isinstance(raw, dict) else {"": raw})
    except ValidationError as error:
        if not isinstance(raw, dict):
            raise QueryError("QUERY must be a JSON object") from None
        raise QueryError(first_error(error)) from None
    return query


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer beyond 64 bits, which orjson refuses
        return json.dumps(value)


def _sqlite_number(value: Any) -> Any:
    """SQLite binds at most 64-bit integers; a bigger one compares the same as a float."""
    return float(value) if isinstance(value, int) and value not in _INT64 else value


class _Compiler:
    """Collects bound parameters; placeholders are numbered, so text order does not matter."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.params: list[Any] = []
        self._once: dict[str, str] = {}

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return self.dialect.placeholder(len(self.params))

    def bind_once(self, value: str) -> str:
        """One parameter however often the statement names it (a path or path segment)."""
        if value not in self._once:
            self._once[value] = self.bind(value)
        return self._once[value]

    def where(self, app: str, channel: str, filters: list[dict[str, Any]],
              seqs: range | None = None) -> str:
        """`seqs` keeps records whose seq is in the range: a bounded range on the (channel,
        seq) key, which SQLite's planner then prefers to a one-sided range on `created`."""
        clauses = [self.dialect.channel_records(self, app, channel)]
        if seqs is not None:
            bound = self.dialect.bind_number
            clauses += [f"seq >= {bound(self, seqs.start)}", f"seq < {bound(self, seqs.stop)}"]
        clauses += [self.filter(f["field"], f["operator"], f["value"]) for f in filters]
        return " AND ".join(clauses)

    def filter(self, field: str, operator: str, value: Any) -> str:
        if field in COLUMNS:
            return self.column_filter(field, operator, value)
        d = self.dialect
        if operator == "exists":
            return d.json_exists(self, field, value)
        if operator == "=":
            return d.json_match(self, field, value)
        if operator == "!=":
            return f"NOT COALESCE({d.json_equals(self, field, value)}, {d.false})"
        if operator in ("in", "nin"):
            matches = d.json_in(self, field, value)
            return matches if operator == "in" else f"NOT COALESCE({matches}, {d.false})"
        if operator == "contains":
            return d.json_contains(self, field, value)
        return d.json_compare(self, field, operator, value)

    def column_filter(self, field: str, operator: str, value: Any) -> str:
        d = self.dialect
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
            return d.text_contains(field, self.bind(value))
        if operator in ("in", "nin"):
            present = [item for item in value if item is not None]
            parts = []
            if present:
                bound = ", ".join(self.bind_column(kind, item) for item in present)
                parts.append(f"{field} IN ({bound})")
            if len(present) < len(value):
                parts.append(f"{field} IS NULL")
            matches = " OR ".join(parts) or d.false
            return f"({matches})" if operator == "in" else f"NOT COALESCE(({matches}), {d.false})"
        if value is None:
            return f"({field} IS {'NOT ' if operator == '!=' else ''}NULL)"
        if operator == "!=":
            return f"({field} {d.distinct_from} {self.bind_column(kind, value)})"
        if operator == "=":
            return f"({field} = {self.bind_column(kind, value)})"
        return f"({d.sortable(field, kind)} {operator} {self.bind_column(kind, value)})"

    def bind_column(self, kind: str, value: Any) -> str:
        return self.dialect.bind_number(self, value) if kind == "number" else self.bind(value)


class Dialect(ABC):
    """How one engine spells placeholders and JSON access; the compiler decides the meaning.

    Every JSON condition is true when the record matches, and false or NULL when it does not
    (a missing path may give NULL: the compiler wraps negations in COALESCE).
    """

    false = "0"
    distinct_from = "IS NOT"

    @abstractmethod
    def placeholder(self, number: int) -> str:
        """The text naming bound parameter `number` (counted from 1)."""

    def channel_records(self, c: _Compiler, app: str, channel: str) -> str:
        """The condition keeping one channel's rows of `records`."""
        return f"app = {c.bind(app)} AND channel = {c.bind(channel)}"

    def channel_count(self, c: _Compiler, app: str, channel: str) -> str:
        """A scalar subquery: how many records the channel holds, as its appends counted them."""
        return (f"(SELECT records FROM channel_counts "
                f"WHERE app = {c.bind(app)} AND channel = {c.bind(channel)})")

    def bind_number(self, c: _Compiler, value: int | float) -> str:
        return c.bind(value)

    @abstractmethod
    def text_contains(self, column: str, needle: str) -> str: ...

    def sortable(self, column: str, kind: str) -> str:
        """A column as compared by `<` and sorted: bytewise for text, like SQLite's BINARY."""
        return column

    @abstractmethod
    def json_exists(self, c: _Compiler, field: str, present: bool) -> str: ...

    @abstractmethod
    def json_equals(self, c: _Compiler, field: str, value: Any) -> str: ...

    def json_match(self, c: _Compiler, field: str, value: Any) -> str:
        """`=` at the top of the WHERE, where an index may help; the same result as equals."""
        return self.json_equals(c, field, value)

    @abstractmethod
    def json_in(self, c: _Compiler, field: str, values: list[Any]) -> str: ...

    @abstractmethod
    def json_contains(self, c: _Compiler, field: str, needle: str) -> str: ...

    @abstractmethod
    def json_compare(self, c: _Compiler, field: str, operator: str, value: Any) -> str:
        """`<`, `<=`, `>`, `>=` against a number (numbers only) or a string (strings only)."""

    @abstractmethod
    def order_terms(self, c: _Compiler, field: str, order: str) -> list[str]:
        """ORDER BY terms sorting like SQLite: null/missing, then numbers and booleans (as 1/0),
        then strings and JSON text."""

    @abstractmethod
    def group_sql(self, c: _Compiler, field: str, where_sql: str, carried: str) -> str:
        """SELECT of (v, t, n) rows: the groups of the records passing `where_sql` merged with
        `carried` (a JSON array of such rows counted before), ordered by count descending then
        value, without LIMIT."""


class SqliteDialect(Dialect):
    """SQLite 3.38+: `?N` placeholders, `json_extract` / `json_type` with a `$.a.b` path."""

    def placeholder(self, number: int) -> str:
        return f"?{number}"

    def channel_records(self, c: _Compiler, app: str, channel: str) -> str:
        # Records carry their channel's number (migration 0005); a channel never stored has
        # none, and the condition keeps nothing.
        return f"channel_id = (SELECT id FROM channels WHERE {self._channel(c, app, channel)})"

    def channel_count(self, c: _Compiler, app: str, channel: str) -> str:
        return f"(SELECT records FROM channels WHERE {self._channel(c, app, channel)})"

    def _channel(self, c: _Compiler, app: str, channel: str) -> str:
        return f"app = {c.bind(app)} AND name = {c.bind(channel)}"

    def bind_number(self, c: _Compiler, value: int | float) -> str:
        return c.bind(_sqlite_number(value))

    def text_contains(self, column: str, needle: str) -> str:
        return f"(instr({column}, {needle}) > 0)"

    def _value(self, c: _Compiler, field: str) -> str:
        if field in COLUMNS:
            return field
        return f"json_extract(data, {c.bind_once('$' + field[4:])})"

    def _type(self, c: _Compiler, field: str) -> str:
        return f"json_type(data, {c.bind_once('$' + field[4:])})"

    def json_exists(self, c: _Compiler, field: str, present: bool) -> str:
        return f"{self._type(c, field)} IS {'NOT ' if present else ''}NULL"

    def json_equals(self, c: _Compiler, field: str, value: Any) -> str:
        if value is None:
            return f"({self._type(c, field)} = 'null')"
        if isinstance(value, bool):
            return f"({self._type(c, field)} = '{'true' if value else 'false'}')"
        kind = "= 'text'" if isinstance(value, str) else f"IN {NUMBER_TYPES}"
        return (f"({self._type(c, field)} {kind} AND "
                f"{self._value(c, field)} = {c.bind(_sqlite_number(value))})")

    def json_in(self, c: _Compiler, field: str, values: list[Any]) -> str:
        return f"({' OR '.join(self.json_equals(c, field, item) for item in values) or '0'})"

    def json_contains(self, c: _Compiler, field: str, needle: str) -> str:
        return (f"({self._type(c, field)} = 'text' AND "
                f"instr({self._value(c, field)}, {c.bind(needle)}) > 0)")

    def json_compare(self, c: _Compiler, field: str, operator: str, value: Any) -> str:
        kind = f"IN {NUMBER_TYPES}" if not isinstance(value, str) else "= 'text'"
        return (f"({self._type(c, field)} {kind} AND "
                f"{self._value(c, field)} {operator} {c.bind(_sqlite_number(value))})")

    def order_terms(self, c: _Compiler, field: str, order: str) -> list[str]:
        return [f"{self._value(c, field)} {order}"]

    def group_sql(self, c: _Compiler, field: str, where_sql: str, carried: str) -> str:
        kind = "NULL" if field in COLUMNS else f"COALESCE({self._type(c, field)}, 'null')"
        before = ("SELECT json_extract(value, '$[0]') AS v, json_extract(value, '$[1]') AS t, "
                  f"json_extract(value, '$[2]') AS c FROM json_each({carried})")
        now = (f"SELECT {self._value(c, field)} AS v, {kind} AS t, COUNT(*) AS c FROM records "
               f"WHERE {where_sql} GROUP BY v, t")
        return (f"SELECT v, t, SUM(c) AS n FROM ({before} UNION ALL {now}) "
                f"GROUP BY v, t ORDER BY n DESC, v, t")


class PostgresDialect(Dialect):
    """PostgreSQL 13+ over a JSONB `data` column: `$N` placeholders, `->` with text keys.

    A path walks object keys only (`data -> $3::text -> $4::text`), as SQLite's `$.a.b` does:
    `data.0` is the key "0", never an array index. Text compares and sorts with `COLLATE "C"`
    (bytewise, like SQLite's BINARY); SQLite's cross-type order is rebuilt from `jsonb_typeof`,
    with objects and arrays as compact JSON text (`c8ws_json_text`, from the migrations).
    """

    false = "FALSE"
    distinct_from = "IS DISTINCT FROM"

    def placeholder(self, number: int) -> str:
        return f"${number}"

    def bind_number(self, c: _Compiler, value: int | float) -> str:
        # A bigint parameter keeps the (app, channel, created, seq) index usable; anything else
        # compares exactly as numeric instead of failing to encode.
        if isinstance(value, int) and value in _INT64:
            return c.bind(value)
        return f"{c.bind(value)}::numeric"

    def text_contains(self, column: str, needle: str) -> str:
        return f"(strpos({column}, {needle}::text) > 0)"

    def sortable(self, column: str, kind: str) -> str:
        return f'{column} COLLATE "C"' if kind == "text" else column

    def _json(self, c: _Compiler, field: str) -> str:
        segments = field.split(".")[1:]
        if not segments:
            return "data"
        return "(data" + "".join(f" -> {c.bind_once(s)}::text" for s in segments) + ")"

    def json_exists(self, c: _Compiler, field: str, present: bool) -> str:
        return f"({self._json(c, field)} IS {'NOT ' if present else ''}NULL)"

    def json_equals(self, c: _Compiler, field: str, value: Any) -> str:
        # jsonb equality is type-aware already: 1 = 1.0, but 1 != "1" and 1 != true.
        return f"({self._json(c, field)} = {c.bind(_json(value))}::jsonb)"

    def json_match(self, c: _Compiler, field: str, value: Any) -> str:
        if field == "data":
            return self.json_equals(c, field, value)
        # Containment lets the GIN (jsonb_path_ops) index find candidates; the equality after it
        # keeps the exact meaning (containment alone would also accept arrays holding the value).
        nested = value
        for segment in reversed(field.split(".")[1:]):
            nested = {segment: nested}
        return f"(data @> {c.bind(_json(nested))}::jsonb AND {self.json_equals(c, field, value)})"

    def json_in(self, c: _Compiler, field: str, values: list[Any]) -> str:
        encoded = [_json(item) for item in values]
        return f"({self._json(c, field)} = ANY({c.bind(encoded)}::jsonb[]))"

    def json_contains(self, c: _Compiler, field: str, needle: str) -> str:
        x = self._json(c, field)
        return (f"(jsonb_typeof({x}) = 'string' AND "
                f"strpos({x} #>> '{{}}', {c.bind(needle)}::text) > 0)")

    def json_compare(self, c: _Compiler, field: str, operator: str, value: Any) -> str:
        x = self._json(c, field)
        if isinstance(value, str):
            return (f"(jsonb_typeof({x}) = 'string' AND "
                    f"({x} #>> '{{}}') COLLATE \"C\" {operator} {c.bind(value)}::text)")
        return f"(jsonb_typeof({x}) = 'number' AND {x} {operator} {c.bind(_json(value))}::jsonb)"

    @staticmethod
    def _sort_keys(x: str) -> list[str]:
        """SQLite's order of json_extract values: NULL, numbers (true 1, false 0), text."""
        return [
            f"(CASE WHEN jsonb_typeof({x}) IN ('number', 'boolean') THEN 1 "
            f"WHEN jsonb_typeof({x}) IN ('string', 'object', 'array') THEN 2 ELSE 0 END)",
            f"(CASE jsonb_typeof({x}) WHEN 'number' THEN ({x})::numeric "
            f"WHEN 'boolean' THEN CASE WHEN ({x})::boolean THEN 1 ELSE 0 END END)",
            f"(CASE jsonb_typeof({x}) WHEN 'string' THEN {x} #>> '{{}}' "
            f"WHEN 'object' THEN c8ws_json_text({x}) WHEN 'array' THEN c8ws_json_text({x}) END) "
            f'COLLATE "C"',
        ]

    def order_terms(self, c: _Compiler, field: str, order: str) -> list[str]:
        if field in COLUMNS:
            nulls = " NULLS FIRST" if order == "ASC" else " NULLS LAST"
            return [f"{self.sortable(field, COLUMNS[field])} {order}"
                    + (nulls if COLUMNS[field] == "text" else "")]
        return [f"{key} {order}" for key in self._sort_keys(self._json(c, field))]

    def group_sql(self, c: _Compiler, field: str, where_sql: str, carried: str) -> str:
        before = f"jsonb_array_elements({carried}::jsonb) AS x"
        if field in COLUMNS:
            kind = COLUMNS[field]
            cast = "bigint" if kind == "number" else "text"
            parts = (f"SELECT (x ->> 0)::{cast} AS v, (x ->> 2)::bigint AS c FROM {before} "
                     f"UNION ALL SELECT {field} AS v, COUNT(*) AS c FROM records "
                     f"WHERE {where_sql} GROUP BY {field}")
            return (f"SELECT v, NULL::text AS t, SUM(c)::bigint AS n FROM ({parts}) AS parts "
                    f"GROUP BY v ORDER BY n DESC, {self.sortable('v', kind)} NULLS FIRST")
        # Group by the value's JSON text: 1 and 1.0 stay apart (as SQLite's integer and real do),
        # a missing path joins null, and the text parses back to the value with its type.
        value = f"COALESCE({self._json(c, field)}, 'null'::jsonb)::text"
        parts = (f"SELECT x ->> 0 AS g, (x ->> 2)::bigint AS c FROM {before} "
                 f"UNION ALL SELECT {value} AS g, COUNT(*) AS c FROM records "
                 f"WHERE {where_sql} GROUP BY 1")
        x = "(g::jsonb)"
        sqlite_type = (
            f"(CASE jsonb_typeof({x}) WHEN 'number' THEN "
            f"CASE WHEN g ~ '[.eE]' THEN 'real' ELSE 'integer' END "
            f"WHEN 'string' THEN 'text' WHEN 'boolean' THEN g ELSE jsonb_typeof({x}) END) "
            f'COLLATE "C"'
        )
        keys = ", ".join([*self._sort_keys(x), sqlite_type, 'g COLLATE "C"'])
        return (f"SELECT g AS v, '{ENCODED}' AS t, n FROM (SELECT g, SUM(c)::bigint AS n "
                f"FROM ({parts}) AS parts GROUP BY g) AS grouped ORDER BY n DESC, {keys}")


SQLITE: Dialect = SqliteDialect()
POSTGRES: Dialect = PostgresDialect()


def compile_where(app: str, channel: str, filters: list[dict[str, Any]],
                  dialect: Dialect = SQLITE) -> tuple[str, list[Any]]:
    """The WHERE condition (and its parameters, numbered from 1) selecting a channel's records
    that pass every filter."""
    where = _Compiler(dialect)
    return where.where(app, channel, filters), where.params


def compile_page(app: str, channel: str, query: dict[str, Any],
                 dialect: Dialect = SQLITE) -> Statement:
    """The page of items the QUERY asks for or, with groupBy, its page of groups."""
    c = _Compiler(dialect)
    where_sql = c.where(app, channel, query["filters"])
    group_by = query["groupBy"]
    if group_by is not None:
        sql = dialect.group_sql(c, group_by, where_sql, c.bind("[]"))
    else:
        order = "DESC" if query["sortOrder"] == "desc" else "ASC"
        terms = [*dialect.order_terms(c, query["sortField"], order), f"seq {order}"]
        sql = (f"SELECT id, client_id, created, data, username, seq FROM records "
               f"WHERE {where_sql} ORDER BY {', '.join(terms)}")
    sql += f" LIMIT {c.bind(query['limit'])} OFFSET {c.bind(query['offset'])}"
    return Statement(sql, c.params)


def compile_count(app: str, channel: str, filters: list[dict[str, Any]], seqs: range,
                  dialect: Dialect = SQLITE) -> Statement:
    """How many of the channel's records with a seq in `seqs` pass the filters."""
    c = _Compiler(dialect)
    return Statement(f"SELECT COUNT(*) FROM records WHERE {c.where(app, channel, filters, seqs)}",
                     c.params)


def compile_groups(app: str, channel: str, query: dict[str, Any], seqs: range, carried: str,
                   most: int, dialect: Dialect = SQLITE) -> Statement:
    """At most `most` groups, in answer order, of the records with a seq in `seqs` that pass
    the filters, merged with `carried` (the JSON array of (v, t, n) rows counted before)."""
    c = _Compiler(dialect)
    where_sql = c.where(app, channel, query["filters"], seqs)
    sql = dialect.group_sql(c, query["groupBy"], where_sql, c.bind(carried))
    return Statement(f"{sql} LIMIT {c.bind(most)}", c.params)


def compile_freshness(app: str, channel: str, after_seq: int | None,
                      dialect: Dialect = SQLITE) -> Statement:
    """One row: the channel's record count (kept by its appends), its highest seq and, given
    `after_seq`, how many of its records have a larger seq."""
    c = _Compiler(dialect)
    here = dialect.channel_records(c, app, channel)
    columns = [dialect.channel_count(c, app, channel),
               f"(SELECT MAX(seq) FROM records WHERE {here})"]
    if after_seq is not None:
        columns.append(f"(SELECT COUNT(*) FROM records WHERE {here} "
                       f"AND seq > {dialect.bind_number(c, after_seq)})")
    return Statement(f"SELECT {', '.join(columns)}", c.params)


def group_value(value: Any, json_type: str | None) -> Any:
    """A grouped value with its JSON type restored (`true` stays `true`, objects parse)."""
    if json_type == ENCODED:
        return orjson.loads(value)
    if json_type in ("null", None) and value is None:
        return None
    if json_type == "true":
        return True
    if json_type == "false":
        return False
    if json_type in ("object", "array"):
        return orjson.loads(value)
    return value


RANGE_COLUMNS = "seq, id, client_id, created, username, data, text"
"""The columns `stored_record` reads, in order (a store's read_range selects these)."""


def stored_record(app: str, channel: str, row: Any) -> Record:
    """A Record from a row of RANGE_COLUMNS (`data` as JSON text)."""
    return Record(app=app, channel=channel, seq=row[0], id=row[1], client_id=row[2],
                  created=row[3], username=row[4], data=orjson.loads(row[5]), text=row[6],
                  persistent=True)


def items_of(rows: Any) -> list[dict[str, Any]]:
    """Search items from the rows of a page statement without groupBy."""
    return [{"id": r[0], "client_id": r[1], "created": r[2], "data": orjson.loads(r[3]),
             "username": r[4], "seq": r[5]} for r in rows]


def groups_of(rows: Any) -> list[dict[str, Any]]:
    """Search groups from (v, t, n) rows."""
    return [{"value": group_value(v, t), "count": n} for v, t, n in rows]
