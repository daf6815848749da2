"""How a store answers a QUERY: the page from SQL, and the total and groups counted once.

Counting every match is what makes a search over a big channel slow (a million records take
about a second), and widgets repeat the same search all the time. Records are only ever added
(the Store contract), so what a search counted over a channel's records up to seq S stays true:
the next identical search counts only the records with a larger seq and adds them. The channel's
record count (raised in each append's transaction) tells when a record at or below S was
committed after the count (another node's batch landing late): then the search counts
everything again. Totals stay exact either way.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any

import orjson

from app.query import (
    Dialect,
    Statement,
    compile_count,
    compile_freshness,
    compile_groups,
    compile_page,
    groups_of,
    items_of,
)

Plan = Generator[Statement, list[Any], dict[str, Any]]
"""One search: yields its statements, is sent each one's rows, returns the answer. Every
statement of one plan must run in the same snapshot (one read transaction)."""


def _step(plan: Plan, rows: list[Any] | None) -> tuple[Statement | None, dict[str, Any]]:
    """Send a plan the last statement's rows (None to start it): its next statement, or None
    and its answer."""
    try:
        return plan.send(rows), {}  # type: ignore[arg-type]  # None starts it
    except StopIteration as done:
        return None, done.value


def run_plan(plan: Plan, fetch: Callable[[Statement], list[Any]]) -> dict[str, Any]:
    """Carry out a plan with a blocking `fetch` (SQLite, on its search thread)."""
    with contextlib.closing(plan):
        statement, answer = _step(plan, None)
        while statement is not None:
            statement, answer = _step(plan, fetch(statement))
        return answer


async def run_plan_async(plan: Plan,
                         fetch: Callable[[Statement], Awaitable[list[Any]]]) -> dict[str, Any]:
    """Carry out a plan with an awaitable `fetch` (PostgreSQL)."""
    with contextlib.closing(plan):
        statement, answer = _step(plan, None)
        while statement is not None:
            statement, answer = _step(plan, await fetch(statement))
        return answer

MAX_ENTRIES = 1024
"""Searches whose counts are kept (least recently used go first)."""

MAX_GROUPS = 10_000
"""Groups one search may keep; a groupBy with more has its groups counted again every time."""

MAX_CARRIED_CHARS = 1 << 20
"""Groups one search may keep, as JSON text: values can be long, and the text is sent back to
the database on every repeat."""

MAX_KEPT_CHARS = 64 << 20
"""Groups kept over all searches, as JSON text."""


@dataclass(frozen=True)
class Counted:
    """What one search counted over the channel's records with seq up to `seq`."""

    seq: int
    records: int
    total: int
    carried: str | None
    """Every group as a JSON array of (v, t, n) rows, or None when there were too many."""


class SearchCounts:
    """Answers searches, reusing the counts of the same search done before."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._counted: OrderedDict[str, Counted] = OrderedDict()
        self._kept_chars = 0

    def plan(self, app: str, channel: str, query: dict[str, Any]) -> Plan:
        """`{"total", "items"}` or, with groupBy, `{"total", "groups"}` for a validated QUERY.
        A plan, not a coroutine, so SQLite can run a whole search in one call on its own thread
        (each hand-off between threads waits for a busy event loop)."""
        # json, not orjson: a filter may hold an integer past 64 bits.
        key = json.dumps([app, channel, query["filters"], query["groupBy"]])
        before = self._counted.get(key)
        after_seq = before.seq if before else None
        row = (yield compile_freshness(app, channel, after_seq, self._dialect))[0]
        records, last = row[0] or 0, row[1] or 0
        if before is not None and records - before.records != row[2]:
            before = None  # a record at or below before.seq arrived since: count again
        seqs = range(before.seq + 1 if before else 0, last + 1)
        first, end = query["offset"], query["offset"] + query["limit"]

        groups: list[Any] = []  # the answer's leading groups, when counted here
        carried = "[]" if before is None else before.carried
        if query["groupBy"] is not None and carried is not None:
            groups = [tuple(r) for r in (yield compile_groups(
                app, channel, query, seqs, carried, MAX_GROUPS + 1, self._dialect))]
            if len(groups) <= MAX_GROUPS:
                total = sum(n for _, _, n in groups)
                kept = orjson.dumps(groups).decode()
                self._keep(key, Counted(last, records, total,
                                        kept if len(kept) <= MAX_CARRIED_CHARS else None))
                return {"total": total, "groups": groups_of(groups[first:end])}

        counted = yield compile_count(app, channel, query["filters"], seqs, self._dialect)
        total = (before.total if before else 0) + int(counted[0][0])
        self._keep(key, Counted(last, records, total, None))
        if end <= len(groups):  # too many groups to keep, but the page is among those counted
            return {"total": total, "groups": groups_of(groups[first:end])}
        page_rows = yield compile_page(app, channel, query, self._dialect)
        if query["groupBy"] is not None:
            return {"total": total, "groups": groups_of(page_rows)}
        return {"total": total, "items": items_of(page_rows)}

    def _keep(self, key: str, counted: Counted) -> None:
        old = self._counted.pop(key, None)
        if old is not None:
            self._kept_chars -= len(old.carried or "")
        self._counted[key] = counted
        self._kept_chars += len(counted.carried or "")
        while len(self._counted) > MAX_ENTRIES or self._kept_chars > MAX_KEPT_CHARS:
            _, dropped = self._counted.popitem(last=False)
            self._kept_chars -= len(dropped.carried or "")
