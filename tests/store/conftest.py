"""Every store test runs twice: on a SQLite file under tmp_path and on PostgreSQL at
127.0.0.1:5432 (database `test`, trust auth), each PostgreSQL test in a schema of its own that
is dropped afterwards. Where no PostgreSQL server answers, those runs are skipped, with the
reason shown."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from warmroute.store import Store, open_store

PG_HOST, PG_PORT, PG_DATABASE = "127.0.0.1", 5432, "test"
PG_USERS = ("postgres", "root")


@dataclass(frozen=True)
class Postgres:
    """A reachable server's base URL, or why there is none."""

    url: str | None
    reason: str = ""


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    errors: list[str] = []
    for user in PG_USERS:
        url = f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"
        try:
            with psycopg.connect(url, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            return Postgres(url)
        except psycopg.OperationalError as exc:
            errors.append(f"{user}: {str(exc).strip().splitlines()[0]}")
    return Postgres(None, "; ".join(errors))


def postgres_schema_url(base: str, schema: str) -> str:
    """The same server with `schema` first on the search path, so every table lands there."""
    return f"{base}?options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, postgres: Postgres) -> Iterator[str]:
    """A fresh, empty database for one test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'warmroute.db'}"
        return
    if postgres.url is None:
        pytest.skip(
            f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT}/{PG_DATABASE}: {postgres.reason}"
        )
    base, schema = postgres.url, f"wr_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield postgres_schema_url(base, schema)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()
