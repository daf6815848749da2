"""What only the PostgreSQL store does: numbered migrations, refusing U+0000, a lost engine."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pytest

from app.errors import NotStored, StoreError
from app.records import Record, record_id
from app.store import create_store

pytestmark = pytest.mark.asyncio


def _record(seq: int, data: object, text: str | None = None) -> Record:
    return Record(app="demo", channel="nul", seq=seq, id=record_id(seq), client_id="c",
                  created=1_678_724_097_000 + seq, data=data, text=text, persistent=True)


async def test_migrations_apply_once_and_are_recorded(postgres_url: str) -> None:
    """Opening the same schema twice applies each numbered migration exactly once."""
    for _ in range(2):
        store = create_store(postgres_url)
        await store.open()
        await store.close()
    db = await asyncpg.connect(postgres_url)
    try:
        rows = await db.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await db.close()
    assert [row[0] for row in rows] == [1, 2, 3]


async def test_nul_characters_are_refused_alone(postgres_url: str) -> None:
    """U+0000 cannot live in JSONB or text: that record is NotStored, its batch-mates commit."""
    store = create_store(postgres_url)
    await store.open()
    try:
        outcomes = await asyncio.gather(
            store.append_record(_record(1, {"ok": "a\\u0000 is six characters here"})),
            store.append_record(_record(2, {"bad": "a\x00b"})),
            store.append_record(_record(3, "fine", text="raw\x00frame")),
            store.append_record(_record(4, {"ok": True})),
            return_exceptions=True,
        )
        assert [type(outcome).__name__ for outcome in outcomes] == [
            "NoneType", "NotStored", "NotStored", "NoneType"]
        stored = await store.read_range("demo", "nul", 0, 10)
        assert [r.seq for r in stored] == [1, 4]
        assert stored[0].data == {"ok": "a\\u0000 is six characters here"}
    finally:
        await store.close()


async def test_unreachable_engine_is_a_store_error_without_the_password() -> None:
    """open() against a closed port fails with StoreError naming the host, not the password."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = create_store(f"postgresql://c8ws:hunter2@127.0.0.1:{port}/c8ws")
    with pytest.raises(StoreError) as caught:
        await store.open()
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(NotStored):
        await store.append_record(_record(1, {}))
