"""Migrations: recorded in order, idempotent, safe when several openers race, and the migrated
tables match the shapes the queries use."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from warmroute.store import Store, StoreUnavailable, open_store
from warmroute.store.backends import WRITE, database_url, make_engine
from warmroute.store.migrations import MIGRATIONS, apply_migrations
from warmroute.store.schema import metadata, schema_migrations

CHILD_MIGRATE = """
import asyncio, json, sys
from warmroute.store.backends import database_url, make_engine
from warmroute.store.migrations import apply_migrations

async def main() -> None:
    engine = make_engine(database_url(sys.argv[1]))
    try:
        print(json.dumps(await apply_migrations(engine)))
    finally:
        await engine.dispose()

asyncio.run(main())
"""
ALL_VERSIONS = [m.version for m in MIGRATIONS]


def test_steps_are_numbered_in_order() -> None:
    assert list(range(1, len(MIGRATIONS) + 1)) == ALL_VERSIONS
    for migration in MIGRATIONS:
        assert migration.name.startswith(f"m{migration.version:03d}_")
    assert len({m.name for m in MIGRATIONS}) == len(MIGRATIONS)


async def test_open_records_every_migration(store: Store) -> None:
    versions = await store.schema_versions()
    assert [(v, n) for v, n, _ in versions] == [(m.version, m.name) for m in MIGRATIONS]
    assert all(applied_at > 1_600_000_000 for _, _, applied_at in versions)


async def test_applying_twice_changes_nothing(store_url: str) -> None:
    engine = make_engine(database_url(store_url))
    try:
        assert await apply_migrations(engine, clock=lambda: 1000.0) == ALL_VERSIONS
        assert await apply_migrations(engine, clock=lambda: 2000.0) == []
    finally:
        await engine.dispose()
    store = await open_store(store_url)
    try:
        versions = await store.schema_versions()
    finally:
        await store.close()
    assert [(v, t) for v, _, t in versions] == [(v, 1000.0) for v in ALL_VERSIONS]


async def test_concurrent_openers_apply_once(store_url: str) -> None:
    engines = [make_engine(database_url(store_url)) for _ in range(4)]
    try:
        results = await asyncio.gather(*(apply_migrations(e) for e in engines))
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))
    assert sorted(results) == [[], [], [], ALL_VERSIONS]
    stores = await asyncio.gather(*(open_store(store_url) for _ in range(3)))
    try:
        assert [len(await s.schema_versions()) for s in stores] == [len(MIGRATIONS)] * 3
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_concurrent_processes_apply_once(store_url: str) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD_MIGRATE, store_url, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)
    assert [p.returncode for p in procs] == [0, 0, 0]
    results = sorted(json.loads(out) for out, _ in outputs)
    assert results == [[], [], ALL_VERSIONS]


def _columns(conn: Connection) -> dict[str, list[tuple[str, bool]]]:
    inspector = sa.inspect(conn)
    return {
        table: [(c["name"], bool(c["nullable"])) for c in inspector.get_columns(table)]
        for table in inspector.get_table_names()
    }


async def test_migrated_tables_match_schema_module(store: Store, store_url: str) -> None:
    engine = make_engine(database_url(store_url))
    try:
        async with engine.connect() as conn:
            migrated = await conn.run_sync(_columns)
    finally:
        await engine.dispose()
    expected = {
        table.name: [(c.name, bool(c.nullable)) for c in table.columns]
        for table in metadata.sorted_tables
    }
    assert migrated == expected


async def test_a_newer_schema_is_refused(store: Store, store_url: str) -> None:
    engine = make_engine(database_url(store_url))
    try:
        async with engine.execution_options(**WRITE).begin() as conn:
            await conn.execute(
                schema_migrations.insert().values(version=99, name="m099_future", applied_at=1.0)
            )
    finally:
        await engine.dispose()
    with pytest.raises(StoreUnavailable, match="m099_future"):
        await open_store(store_url)
