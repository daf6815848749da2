"""`c8ws export` and `c8ws import`: a channel's stored records as NDJSON or CSV, in pages, with
progress on stderr. Import appends the records (same ids, `created`, usernames and data) to a
channel, numbering them after whatever it holds."""

from __future__ import annotations

import asyncio
import csv
import io
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import IO, Any

import orjson

from app.errors import ClientError, ConfigError
from app.protocol import check_nesting, client_json
from app.records import Record
from app.store.base import Store

PAGE = 1000
CSV_COLUMNS = ("seq", "id", "client_id", "created", "username", "data")


async def stored_records(store: Store, app: str, channel: str,
                         filters: list[dict[str, Any]] | None = None) -> AsyncIterator[Record]:
    """Every stored record of a channel (passing `filters`) in seq order, a page at a time, so
    memory stays bounded however long the channel is."""
    after = 0
    while True:
        page = await store.read_range(app, channel, after, PAGE, filters)
        for record in page:
            yield record
        if len(page) < PAGE:
            return
        after = page[-1].seq


def csv_row(record: dict[str, Any]) -> list[Any]:
    return [*(record[c] for c in CSV_COLUMNS[:-1]), orjson.dumps(record["data"]).decode()]


IMPORT_BATCH = 5_000  # records appended before the import waits for their commit


class Progress:
    """`N records` rewritten in place on a terminal, a line per 100,000 otherwise."""

    def __init__(self, verb: str, stream: IO[str] = sys.stderr) -> None:
        self.verb = verb
        self.stream = stream
        self.count = 0
        self.tty = stream.isatty()

    def step(self) -> None:
        self.count += 1
        if self.tty and self.count % 1000 == 0:
            self.stream.write(f"\r{self.verb} {self.count:,} records")
        elif not self.tty and self.count % 100_000 == 0:
            self.stream.write(f"{self.verb} {self.count:,} records\n")

    def done(self) -> None:
        self.stream.write(f"{chr(13) if self.tty else ''}{self.verb} {self.count:,} records, "
                          "done\n")


def export_header(kind: str) -> str:
    """What an export starts with: the CSV header, or nothing for NDJSON."""
    return _csv_line(CSV_COLUMNS) if kind == "csv" else ""


async def export_lines(store: Store, app: str, channel: str, kind: str,
                       filters: list[dict[str, Any]] | None = None) -> AsyncIterator[str]:
    """A channel's stored records as NDJSON or CSV lines, one per record."""
    async for record in stored_records(store, app, channel, filters):
        public = record.public()
        yield _csv_line(csv_row(public)) if kind == "csv" else orjson.dumps(public).decode() + "\n"


def _csv_line(values: Sequence[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue()


async def export_channel(store: Store, app: str, channel: str, kind: str, out: IO[str]) -> int:
    progress = Progress("exported")
    out.write(export_header(kind))
    async for line in export_lines(store, app, channel, kind):
        out.write(line)
        progress.step()
    progress.done()
    return progress.count


def _ndjson(lines: IO[str]) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = client_json(line, nesting=False)
            if not isinstance(value, dict) or not {"id", "created", "data"} <= value.keys():
                raise ConfigError(f"line {number} is not a record (id, created, data)")
            # the data as a publish would have it: exported records nest it one level deeper
            check_nesting(line, value["data"])
        except orjson.JSONDecodeError:
            raise ConfigError(f"line {number} is not JSON") from None
        except ClientError as error:
            raise ConfigError(f"line {number}: {error.message}") from None
        yield value


async def import_channel(store: Store, app: str, channel: str, lines: IO[str]) -> int:
    """Append NDJSON records to the channel, IMPORT_BATCH per commit; returns how many."""
    progress = Progress("imported")
    seq = await store.last_seq(app, channel)
    committing: asyncio.Future[None] | None = None
    for value in _ndjson(lines):
        seq += 1
        appended = store.append_record(Record(
            app=app, channel=channel, seq=seq, id=str(value["id"]),
            client_id=str(value.get("client_id") or "import"), created=int(value["created"]),
            data=value["data"], username=value.get("username"), persistent=True))
        if appended.done():  # refused at once: raises its NotStored
            await appended
        committing = appended  # nothing is awaited in between, so the chunk is one batch
        progress.step()
        if progress.count % IMPORT_BATCH == 0:
            await asyncio.shield(committing)
    if committing is not None:
        await asyncio.shield(committing)
    progress.done()
    return progress.count
