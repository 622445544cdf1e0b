"""Shared fixtures: the built-in tiny model, one live engine server, and databases: every test
that takes `store_url` runs on a SQLite file and on PostgreSQL at 127.0.0.1:5432 (database
`test`, trust auth), each PostgreSQL run in a schema of its own that is dropped afterwards;
where no PostgreSQL server answers, those runs are skipped with the reason shown."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from tests.procs import Proc, start_engine
from warmroute.config import EngineConfig, warmroute_home

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def home() -> Path:
    return warmroute_home()


@pytest.fixture(scope="session")
def tiny_config(home: Path) -> EngineConfig:
    """builtin:tiny in float32, where a cache hit and a miss agree to 1e-4."""
    return EngineConfig(model="builtin:tiny", dtype="float32", home=home, cache_blocks=512)


@pytest.fixture(scope="session")
def live_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """One real `warmroute engine` process on a free loopback port, shared by HTTP tests."""
    tmp = tmp_path_factory.mktemp("live-engine")
    proc = start_engine(tmp, "live-1", ["--max-running", "8"])
    try:
        proc.wait_healthy()
        yield proc
    finally:
        proc.kill()


def engine_config(base: EngineConfig, **changes: object) -> EngineConfig:
    return replace(base, **changes)  # type: ignore[arg-type]


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
