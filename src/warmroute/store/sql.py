"""The store over SQLAlchemy Core: one query layer for SQLite and PostgreSQL.

Writes run in `WRITE` transactions (see `backends.py`) and are committed before a method returns.
Owner scoping is part of every WHERE clause, so another owner's row is never read at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warmroute.store.base import (
    ApiKey,
    ApiKeyStore,
    DuplicateId,
    Json,
    ResponseNotFound,
    ResponseStore,
    Store,
    StoredResponse,
)
from warmroute.store.deferred import SqlDeferred
from warmroute.store.ledger import SqlUsage
from warmroute.store.parts import Tables as _Tables
from warmroute.store.schema import (
    api_keys,
    responses,
    schema_migrations,
)
from warmroute.store.settings import SqlSettings

MAX_CHAIN = 100_000
"""A bound on `history`'s walk; `put` already makes cycles impossible."""


class SqlResponses(_Tables, ResponseStore):
    async def put(self, response: StoredResponse) -> None:
        r = responses
        try:
            async with self._writer.begin() as conn:
                previous = response.previous_response_id
                if previous is not None:
                    found = await conn.scalar(
                        sa.select(r.c.id).where(r.c.id == previous, r.c.owner == response.owner)
                    )
                    if found is None:
                        raise ResponseNotFound(f"previous response {previous!r} not found")
                await conn.execute(
                    r.insert().values(
                        id=response.id,
                        owner=response.owner,
                        created_at=response.created_at,
                        expires_at=response.expires_at,
                        model=response.model,
                        engine_id=response.engine_id,
                        previous_response_id=previous,
                        input=list(response.input),
                        output=list(response.output),
                        response=response.response,
                    )
                )
        except sa.exc.IntegrityError as exc:
            raise DuplicateId(f"response id {response.id!r} is already stored") from exc

    async def get(
        self, response_id: str, owner: str, now: float | None = None
    ) -> StoredResponse | None:
        r = responses
        query = sa.select(r).where(r.c.id == response_id, *_visible(r, owner, now))
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return StoredResponse(
            id=row.id,
            owner=row.owner,
            created_at=row.created_at,
            expires_at=row.expires_at,
            model=row.model,
            engine_id=row.engine_id,
            previous_response_id=row.previous_response_id,
            input=tuple(row.input),
            output=tuple(row.output),
            response=row.response,
        )

    async def delete(self, response_id: str, owner: str) -> bool:
        r = responses
        async with self._writer.begin() as conn:
            result = await conn.execute(r.delete().where(r.c.id == response_id, r.c.owner == owner))
        return result.rowcount > 0

    async def history(
        self, response_id: str, owner: str, now: float | None = None
    ) -> list[Json] | None:
        r, step = responses, responses.alias("step")
        chain = (
            sa.select(
                r.c.id,
                r.c.previous_response_id.label("prev"),
                r.c.input,
                r.c.output,
                # Literal SQL, not a bound value: PostgreSQL wants one integer type for `depth`.
                sa.literal_column("0", sa.Integer).label("depth"),
            )
            .where(r.c.id == response_id, *_visible(r, owner, now))
            .cte("chain", recursive=True)
        )
        chain = chain.union_all(
            sa.select(
                step.c.id,
                step.c.previous_response_id,
                step.c.input,
                step.c.output,
                chain.c.depth + sa.literal_column("1", sa.Integer),
            ).where(
                step.c.id == chain.c.prev,
                chain.c.depth < MAX_CHAIN,
                *_visible(step, owner, now),
            )
        )
        query = sa.select(chain.c.prev, chain.c.input, chain.c.output).order_by(
            chain.c.depth.desc()
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows or rows[0].prev is not None:  # unknown, or a hole in the chain
            return None
        messages: list[Json] = []
        for row in rows:
            messages.extend(row.input)
            messages.extend(row.output)
        return messages

    async def purge_expired(self, now: float) -> int:
        async with self._writer.begin() as conn:
            result = await conn.execute(responses.delete().where(responses.c.expires_at <= now))
        return result.rowcount


def _visible(table: sa.FromClause, owner: str, now: float | None) -> list[sa.ColumnElement[bool]]:
    conditions = [table.c.owner == owner]
    if now is not None:
        conditions.append(table.c.expires_at > now)
    return conditions


class SqlApiKeys(_Tables, ApiKeyStore):
    async def create(self, key: ApiKey) -> None:
        try:
            async with self._writer.begin() as conn:
                await conn.execute(
                    api_keys.insert().values(
                        key_id=key.key_id,
                        name=key.name,
                        team=key.team,
                        key_hash=key.key_hash,
                        redacted=key.redacted,
                        rpm=key.rpm,
                        tpm=key.tpm,
                        created_at=key.created_at,
                        revoked_at=key.revoked_at,
                        admin=key.admin,
                    )
                )
        except sa.exc.IntegrityError as exc:
            raise DuplicateId(f"API key {key.key_id!r} or its secret is already stored") from exc

    async def get(self, key_id: str) -> ApiKey | None:
        return await self._one(api_keys.c.key_id == key_id)

    async def get_by_hash(self, key_hash: str) -> ApiKey | None:
        return await self._one(api_keys.c.key_hash == key_hash)

    async def _one(self, condition: sa.ColumnElement[bool]) -> ApiKey | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(api_keys).where(condition))).first()
        return None if row is None else _api_key(row)

    async def list_keys(self, team: str | None = None) -> list[ApiKey]:
        k = api_keys
        query = sa.select(k).order_by(k.c.created_at, k.c.key_id)
        if team is not None:
            query = query.where(k.c.team == team)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_api_key(row) for row in rows]

    async def revoke(self, key_id: str, now: float, team: str | None = None) -> bool:
        k = api_keys
        update = k.update().where(k.c.key_id == key_id, k.c.revoked_at.is_(None))
        if team is not None:
            update = update.where(k.c.team == team)
        async with self._writer.begin() as conn:
            result = await conn.execute(update.values(revoked_at=now))
        return result.rowcount > 0


def _api_key(row: sa.Row[Any]) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        name=row.name,
        team=row.team,
        key_hash=row.key_hash,
        redacted=row.redacted,
        created_at=row.created_at,
        rpm=row.rpm,
        tpm=row.tpm,
        revoked_at=row.revoked_at,
        admin=bool(row.admin),
    )


class SqlStore(Store):
    usage: SqlUsage

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.responses = SqlResponses(engine)
        self.deferred = SqlDeferred(engine)
        self.api_keys = SqlApiKeys(engine)
        self.usage = SqlUsage(engine)
        self.settings = SqlSettings(engine)

    async def close(self) -> None:
        await self.usage.close_writer()
        await self.engine.dispose()

    async def schema_versions(self) -> Sequence[tuple[int, str, float]]:
        m = schema_migrations
        query = sa.select(m.c.version, m.c.name, m.c.applied_at).order_by(m.c.version)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(row.version, row.name, row.applied_at) for row in rows]
