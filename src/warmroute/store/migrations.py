"""Numbered schema migrations, in the style of simonw/llm: an ordered list of small named steps,
each recorded in `schema_migrations` (version, name, applied_at) when applied.

Applying is idempotent and safe when several processes start together: everything runs in one
transaction that first takes the database's write lock (`BEGIN IMMEDIATE` on SQLite, an
advisory transaction lock on PostgreSQL), so a second process waits, then finds the work done.
Each step spells out the tables it creates; never edit a step that has shipped, add a new one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from warmroute.errors import StoreUnavailable
from warmroute.store.backends import WRITE
from warmroute.store.schema import schema_migrations

ADVISORY_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"warmroute.store.migrations").digest()[:8], "big", signed=True
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


def m001_responses(conn: Connection) -> None:
    table = sa.Table(
        "responses",
        sa.MetaData(),
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("engine_id", sa.Text),
        sa.Column("previous_response_id", sa.Text),
        sa.Column("input", sa.JSON, nullable=False),
        sa.Column("output", sa.JSON, nullable=False),
        sa.Column("response", sa.JSON, nullable=False),
        sa.Index("responses_expires_at", "expires_at"),
    )
    table.create(conn)


def m002_deferred_completions(conn: Connection) -> None:
    table = sa.Table(
        "deferred_completions",
        sa.MetaData(),
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("result", sa.JSON(none_as_null=True)),
        sa.Column("error", sa.JSON(none_as_null=True)),
        sa.Index("deferred_completions_expires_at", "expires_at"),
    )
    table.create(conn)


def m003_api_keys(conn: Connection) -> None:
    table = sa.Table(
        "api_keys",
        sa.MetaData(),
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("team", sa.Text, nullable=False),
        sa.Column("key_hash", sa.Text, nullable=False),
        sa.Column("redacted", sa.Text, nullable=False),
        sa.Column("rpm", sa.BigInteger),
        sa.Column("tpm", sa.BigInteger),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("revoked_at", sa.Double),
        sa.Index("api_keys_key_hash", "key_hash", unique=True),
        sa.Index("api_keys_team", "team"),
    )
    table.create(conn)


def m004_usage_ledger(conn: Connection) -> None:
    table = sa.Table(
        "usage_ledger",
        sa.MetaData(),
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("time", sa.Double, nullable=False),
        sa.Column("day", sa.Text, nullable=False),
        sa.Column("key_id", sa.Text),
        sa.Column("team", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("engine_id", sa.Text),
        sa.Column("surface", sa.Text, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_in_usd_ticks", sa.BigInteger, nullable=False),
        sa.Index("usage_ledger_time", "time"),
        sa.Index("usage_ledger_team_time", "team", "time"),
    )
    table.create(conn)


def m005_deployment_settings(conn: Connection) -> None:
    table = sa.Table(
        "deployment_settings",
        sa.MetaData(),
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    table.create(conn)


def m006_api_key_admin(conn: Connection) -> None:
    """Operators' keys: existing keys stay tenant keys."""
    conn.execute(sa.text("ALTER TABLE api_keys ADD COLUMN admin BOOLEAN NOT NULL DEFAULT FALSE"))


def m007_deferred_runner(conn: Connection) -> None:
    """Which gateway runs a PENDING deferred completion, and when it last said it still does
    (older rows have neither: they count as stale)."""
    conn.execute(sa.text("ALTER TABLE deferred_completions ADD COLUMN runner TEXT"))
    conn.execute(sa.text(
        "ALTER TABLE deferred_completions ADD COLUMN heartbeat_at DOUBLE PRECISION"))
    conn.execute(sa.text(
        "CREATE INDEX deferred_status_owner ON deferred_completions (status, owner)"))


STEPS = (
    m001_responses, m002_deferred_completions, m003_api_keys, m004_usage_ledger,
    m005_deployment_settings, m006_api_key_admin, m007_deferred_runner,
)
MIGRATIONS = tuple(Migration(i + 1, step.__name__, step) for i, step in enumerate(STEPS))


def _apply(conn: Connection, clock: Callable[[], float]) -> list[int]:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
    schema_migrations.create(conn, checkfirst=True)
    rows = conn.execute(sa.select(schema_migrations.c.version, schema_migrations.c.name))
    applied = {version: name for version, name in rows}
    known = {m.version: m.name for m in MIGRATIONS}
    for version, name in sorted(applied.items()):
        if known.get(version) != name:
            raise StoreUnavailable(
                f"database has migration {version} {name!r}, which this warmroute does not "
                f"know (it knows up to {len(MIGRATIONS)}); is the database from a newer version?"
            )
    done: list[int] = []
    for migration in MIGRATIONS:
        if migration.version in applied:
            continue
        migration.apply(conn)
        conn.execute(
            schema_migrations.insert().values(
                version=migration.version, name=migration.name, applied_at=clock()
            )
        )
        done.append(migration.version)
    return done


async def apply_migrations(
    engine: AsyncEngine, clock: Callable[[], float] = time.time
) -> list[int]:
    """Apply every migration not yet recorded, in order, in one transaction; returns the
    versions applied now (empty when the schema was already current)."""
    async with engine.execution_options(**WRITE).begin() as conn:
        return await conn.run_sync(_apply, clock)
