"""Group commit, shared by the stores: rows appended while a transaction runs wait and go into
the next one together, so many publishers cost one commit."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from app.errors import NotStored
from app.records import Record
from app.store.base import CommitObserver

log = logging.getLogger(__name__)
Row = TypeVar("Row")


class GroupCommit(Generic[Row]):
    """One task writes everything pending with `write(rows)` (one transaction). Every record of
    a batch gets the batch's one future (no future, callback or wake-up per record); on failure
    the whole batch is `NotStored`. `close` commits what is pending first, so no appender is
    left waiting."""

    def __init__(self, write: Callable[[list[Row]], Awaitable[None]],
                 to_row: Callable[[Record], Row], name: str, interval_s: float = 0.0,
                 on_commit: CommitObserver | None = None) -> None:
        self._write = write
        self._to_row = to_row
        self._name = name
        self._interval = interval_s
        self._on_commit = on_commit
        self._pending: list[Row] = []
        self._batch: asyncio.Future[None] | None = None  # the pending rows' future
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=self._name)

    def append(self, record: Record) -> asyncio.Future[None]:
        """Queue `record` for the next commit. The future is done once it is committed, or fails
        with `NotStored` (a future of its own, failed at once, when the record cannot be stored
        or the store is closing). It is shared by the whole batch: wait for it through a done
        callback or `asyncio.shield`, never cancel it."""
        if self._task is None or self._task.done() or self._closing:
            return _failed(NotStored("the store is not accepting records"))
        try:
            row = self._to_row(record)
        except NotStored as error:
            return _failed(error)
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
            self._wakeup.set()
        self._pending.append(row)
        return self._batch

    async def close(self) -> None:
        if self._task is None:
            return
        self._closing = True
        self._wakeup.set()
        await asyncio.wait([self._task])
        self._task = None
        if self._batch is not None:  # only if the task crashed
            _fail(self._batch, "record not stored: the store closed")
        self._pending, self._batch = [], None

    async def _run(self) -> None:
        while not (self._closing and not self._pending):
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._interval and not self._closing:
                await asyncio.sleep(self._interval)
            await self._flush()

    async def _flush(self) -> None:
        rows, batch = self._pending, self._batch
        if batch is None:
            return
        self._pending, self._batch = [], None
        began = time.perf_counter()
        try:
            await self._write(rows)
        except asyncio.CancelledError:
            _fail(batch, "record not stored: the store closed during the commit")
            raise
        except Exception as error:  # the whole batch fails together; every appender is told
            log.error("commit of %d records failed: %s", len(rows), error)
            _fail(batch, f"record not stored: {error}")
            return
        if not batch.done():
            batch.set_result(None)
        if self._on_commit is not None:
            self._on_commit(len(rows), time.perf_counter() - began)


def _failed(error: NotStored) -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future


def _fail(batch: asyncio.Future[None], message: str) -> None:
    if not batch.done():
        batch.set_exception(NotStored(message))
