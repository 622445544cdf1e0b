"""Opening a store: URLs and paths, SQLite settings, unreachable servers, restarts and crashes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from warmroute.store import (
    Store,
    StoredResponse,
    StoreUnavailable,
    UsageRecord,
    UsageTotals,
    default_store_path,
    open_store,
)
from warmroute.store.backends import SQLITE_BUSY_TIMEOUT_MS, WRITE, database_url
from warmroute.store.sql import SqlStore

T0 = 1_700_000_000.0

CHILD_RECORD_THEN_HANG = """
import asyncio, sys
from warmroute.store import UsageRecord, open_store

async def main() -> None:
    store = await open_store(sys.argv[1])
    for i in range(20):
        await store.usage.record(
            UsageRecord(f"u{i}", 1_700_000_000.0 + i, "key_1", "team-a", "m", "e1", "grpc",
                        10, 4, 2, 100)
        )
    print("recorded", flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("data/warmroute.db", "sqlite+aiosqlite:///data/warmroute.db"),
        ("/abs/w.db", "sqlite+aiosqlite:////abs/w.db"),
        ("sqlite:///rel/w.db", "sqlite+aiosqlite:///rel/w.db"),
        ("sqlite:////abs/w.db", "sqlite+aiosqlite:////abs/w.db"),
        ("postgresql://127.0.0.1:5432/test", "postgresql+psycopg://127.0.0.1:5432/test"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h:1/db", "postgresql+psycopg://u@h:1/db"),
    ],
)
def test_database_url(given: str, expected: str) -> None:
    assert database_url(given).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize(
    "given", ["mysql://h/db", ":memory:", "sqlite://", "sqlite:///:memory:", ""]
)
def test_unsupported_urls(given: str) -> None:
    with pytest.raises(ValueError, match=r"unsupported|in-memory"):
        database_url(given)


async def test_sqlite_file_settings_and_folder(tmp_path: Path) -> None:
    path = default_store_path(tmp_path / "new" / "dir")
    assert path == tmp_path / "new" / "dir" / "warmroute.db"
    store = await open_store(path)
    try:
        assert isinstance(store, SqlStore)
        async with store.engine.connect() as conn:
            pragmas = [
                (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "busy_timeout", "synchronous")
            ]
    finally:
        await store.close()
    assert pragmas == ["wal", SQLITE_BUSY_TIMEOUT_MS, 2]  # 2 = FULL
    assert path.is_file()


async def test_unreachable_postgres_is_a_clear_error() -> None:
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1") as caught:
        await open_store("postgresql://someone:sekret@127.0.0.1:1/test")
    assert "sekret" not in caught.value.message


async def test_restart_keeps_data(store_url: str) -> None:
    first = await open_store(store_url)
    try:
        await first.responses.put(
            StoredResponse(
                "r1",
                "team-a",
                T0,
                T0 + 100,
                "m",
                "e2",
                None,
                ({"role": "user", "content": "hi"},),
                ({"role": "assistant", "content": "yo"},),
                {"id": "r1"},
            )
        )
        await first.api_keys.revoke("none", T0)
    finally:
        await first.close()
    second = await open_store(store_url)
    try:
        stored = await second.responses.get("r1", "team-a", now=T0 + 1)
        assert stored is not None and stored.engine_id == "e2"
        assert await second.responses.history("r1", "team-a") == [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
        ]
    finally:
        await second.close()


async def test_recorded_usage_survives_sigkill(store_url: str) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD_RECORD_THEN_HANG, store_url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line.strip() == b"recorded"
    finally:
        child.kill()
        await child.wait()
    store: Store = await open_store(store_url)
    try:
        totals = await store.usage.summary(0, "key")
    finally:
        await store.close()
    assert totals == [UsageTotals("key_1", 20, 200, 80, 40, 2000)]


async def test_sqlite_reader_is_not_blocked_by_a_writer(tmp_path: Path) -> None:
    """WAL: while one connection holds the write lock, another reads the last committed data."""
    store = await open_store(tmp_path / "w.db")
    other = await open_store(tmp_path / "w.db")
    try:
        await store.usage.record(
            UsageRecord("u1", T0, "key_1", "team-a", "m", "e1", "responses", 10, 0, 1, 5)
        )
        await store.usage.summary(0, "key")  # the row committed (it is journaled first)
        assert isinstance(store, SqlStore)
        async with store.engine.execution_options(**WRITE).connect() as conn:
            await conn.execute(sa.text("DELETE FROM usage_ledger"))  # BEGIN IMMEDIATE first
            seen = await asyncio.wait_for(other.usage.summary(0, "key"), 2)
            await conn.rollback()
        assert seen == [UsageTotals("key_1", 1, 10, 0, 1, 5)]
    finally:
        await store.close()
        await other.close()
