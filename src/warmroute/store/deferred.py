"""Deferred completions over SQLAlchemy Core: PENDING entries with their runner's heartbeat, and
the DONE result written in one transaction with its charge's ledger row.

A result and its charge are one write (`complete`): a gateway killed at any moment leaves
either both or neither, so the ledger and the results agree. Owner scoping is part of every
read's WHERE clause.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from warmroute.errors import InvalidRequest
from warmroute.store.base import (
    DeferredCompletion,
    DeferredStatus,
    DeferredStore,
    DuplicateId,
    Json,
    UsageRecord,
)
from warmroute.store.ledger import utc_day
from warmroute.store.parts import Tables
from warmroute.store.schema import deferred_completions, usage_ledger

PENDING = DeferredStatus.PENDING.value


class SqlDeferred(Tables, DeferredStore):
    async def create(
        self, request_id: str, owner: str, created_at: float, expires_at: float,
        runner: str = "",
    ) -> DeferredCompletion:
        if expires_at <= created_at:
            raise InvalidRequest("expires_at must be after created_at")
        entry = DeferredCompletion(
            request_id, owner, DeferredStatus.PENDING, created_at, expires_at
        )
        try:
            async with self._writer.begin() as conn:
                await conn.execute(
                    deferred_completions.insert().values(
                        request_id=request_id, owner=owner, status=PENDING,
                        created_at=created_at, expires_at=expires_at, runner=runner,
                        heartbeat_at=created_at,
                    )
                )
        except sa.exc.IntegrityError as exc:
            raise DuplicateId(f"deferred request id {request_id!r} already exists") from exc
        return entry

    async def complete(self, request_id: str, result: Json,
                       charges: Sequence[UsageRecord] = ()) -> bool:
        d = deferred_completions
        try:
            async with self._writer.begin() as conn:
                done = await conn.execute(
                    d.update().where(d.c.request_id == request_id, d.c.status == PENDING)
                    .values(status=DeferredStatus.DONE.value, result=result)
                )
                if done.rowcount == 0:
                    return False
                for charge in charges:
                    await conn.execute(usage_ledger.insert().values(**ledger_values(charge)))
        except sa.exc.IntegrityError as exc:
            ids = ", ".join(repr(c.id) for c in charges)
            raise DuplicateId(f"a usage row of {ids} is already recorded") from exc
        return True

    async def fail(self, request_id: str, error: Json) -> bool:
        d = deferred_completions
        return await self._fail(error, d.c.request_id == request_id) > 0

    async def pending(self, owner: str | None = None) -> int:
        d = deferred_completions
        query = sa.select(sa.func.count()).select_from(d).where(d.c.status == PENDING)
        if owner is not None:
            query = query.where(d.c.owner == owner)
        async with self._engine.connect() as conn:
            return int(await conn.scalar(query) or 0)

    async def heartbeat(self, runner: str, now: float) -> int:
        d = deferred_completions
        async with self._writer.begin() as conn:
            result = await conn.execute(
                d.update().where(d.c.runner == runner, d.c.status == PENDING)
                .values(heartbeat_at=now)
            )
        return result.rowcount

    async def fail_stale(self, before: float, error: Json) -> int:
        d = deferred_completions
        beat = sa.func.coalesce(d.c.heartbeat_at, d.c.created_at)  # rows from before runners
        return await self._fail(error, beat < before)

    async def fail_runner(self, runner: str, error: Json) -> int:
        return await self._fail(error, deferred_completions.c.runner == runner)

    async def _fail(self, error: Json, condition: sa.ColumnElement[bool]) -> int:
        d = deferred_completions
        async with self._writer.begin() as conn:
            result = await conn.execute(
                d.update().where(condition, d.c.status == PENDING)
                .values(status=DeferredStatus.FAILED.value, error=error)
            )
        return result.rowcount

    async def get(self, request_id: str, owner: str, now: float) -> DeferredCompletion | None:
        d = deferred_completions
        query = sa.select(d).where(d.c.request_id == request_id, d.c.owner == owner)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        if now >= row.expires_at:
            return DeferredCompletion(
                row.request_id, row.owner, DeferredStatus.EXPIRED, row.created_at, row.expires_at
            )
        return DeferredCompletion(
            row.request_id, row.owner, DeferredStatus(row.status), row.created_at,
            row.expires_at, row.result, row.error,
        )

    async def purge_expired(self, now: float) -> int:
        d = deferred_completions
        async with self._writer.begin() as conn:
            result = await conn.execute(d.delete().where(d.c.expires_at <= now))
        return result.rowcount


def ledger_values(row: UsageRecord) -> dict[str, Any]:
    """A usage row as the ledger table's columns."""
    return {
        "id": row.id, "time": row.time, "day": utc_day(row.time), "key_id": row.key_id,
        "team": row.team, "model": row.model, "engine_id": row.engine_id,
        "surface": row.surface, "prompt_tokens": row.prompt_tokens,
        "cached_tokens": row.cached_tokens, "completion_tokens": row.completion_tokens,
        "cost_in_usd_ticks": row.cost_in_usd_ticks,
    }
