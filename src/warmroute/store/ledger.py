"""The usage ledger over SQLAlchemy Core: rows appended (on SQLite through a journal and a
`LedgerWriter` thread), totals per group read back. Owner scoping is part of every WHERE
clause. A row id is recorded at most once: a second row with it is ignored."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from warmroute.errors import InvalidRequest
from warmroute.store.base import (
    GROUP_BYS,
    GroupBy,
    UsageLedger,
    UsageRecord,
    UsageTotals,
)
from warmroute.store.ledger_writer import LedgerWriter, fold_orphan_journals
from warmroute.store.parts import Tables
from warmroute.store.schema import usage_ledger

GROUP_COLUMNS: dict[str, str] = {"key": "key_id", "model": "model", "day": "day", "team": "team"}


def utc_day(time: float) -> str:
    """The UTC date of a Unix time, `YYYY-MM-DD` (one per ledger row: remembered per day)."""
    return _utc_date(int(time // 86400))


@functools.lru_cache(maxsize=64)
def _utc_date(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).date().isoformat()


class SqlUsage(Tables, UsageLedger):
    """On SQLite, a row is journaled on the request's path and committed by a `LedgerWriter`
    thread (group commit, a plain sqlite3 connection: an order of magnitude cheaper per row
    than this module's async path); summaries first wait for this process's rows."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        self._path = Path(database) if database and database != ":memory:" else None
        self._ledger: LedgerWriter | None = None

    @property
    def records_at_once(self) -> bool:
        return self._path is not None  # a journal line, written without waiting

    async def record(self, row: UsageRecord) -> None:
        if self._path is not None:
            if self._ledger is None:
                self._ledger = LedgerWriter(self._path)
            await self._ledger.record(row, utc_day(row.time))
            return
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(usage_ledger).on_conflict_do_nothing(index_elements=["id"])
        async with self._writer.begin() as conn:
            await conn.execute(
                insert.values(
                    id=row.id,
                    time=row.time,
                    day=utc_day(row.time),
                    key_id=row.key_id,
                    team=row.team,
                    model=row.model,
                    engine_id=row.engine_id,
                    surface=row.surface,
                    prompt_tokens=row.prompt_tokens,
                    cached_tokens=row.cached_tokens,
                    completion_tokens=row.completion_tokens,
                    cost_in_usd_ticks=row.cost_in_usd_ticks,
                )
            )

    async def fold_journals(self) -> int:
        """Commit the journals of writers that are gone (a gateway killed with rows not yet
        committed); returns how many rows they held."""
        if self._path is None:
            return 0
        return await asyncio.to_thread(fold_orphan_journals, self._path)

    async def close_writer(self) -> None:
        if self._ledger is not None:
            await self._ledger.close()
            self._ledger = None

    async def summary(
        self,
        since: float,
        group_by: GroupBy,
        owner: str | None = None,
        until: float | None = None,
    ) -> list[UsageTotals]:
        if group_by not in GROUP_BYS:
            raise InvalidRequest(f"group_by must be one of {', '.join(GROUP_BYS)}")
        if self._ledger is not None:
            await self._ledger.flush()  # this process's rows are all in
        u = usage_ledger
        group = u.c[GROUP_COLUMNS[group_by]]
        query = (
            sa.select(
                group,
                sa.func.count(),
                *(
                    sa.cast(sa.func.sum(column), sa.BigInteger)
                    for column in (
                        u.c.prompt_tokens,
                        u.c.cached_tokens,
                        u.c.completion_tokens,
                        u.c.cost_in_usd_ticks,
                    )
                ),
            )
            .where(u.c.time >= since)
            .group_by(group)
            .order_by(group.asc().nulls_first())
        )
        if until is not None:
            query = query.where(u.c.time < until)
        if owner is not None:
            query = query.where(u.c.team == owner)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [UsageTotals(row[0], *(int(value) for value in row[1:])) for row in rows]


