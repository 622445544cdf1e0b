"""Deployment settings over SQLAlchemy Core: a name → value table whose first writer wins.

`get_or_create` inserts with ON CONFLICT DO NOTHING (SQLite and PostgreSQL both have it), then
reads back whichever row won, in one write transaction: replicas that start together all get the
same value.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from warmroute.store.backends import WRITE
from warmroute.store.base import DeploymentSettings
from warmroute.store.schema import deployment_settings


class SqlSettings(DeploymentSettings):
    def __init__(self, engine: AsyncEngine) -> None:
        self._writer = engine.execution_options(**WRITE)
        self._insert = (postgresql.insert if engine.dialect.name == "postgresql"
                        else sqlite.insert)

    async def get_or_create(self, name: str, value: str, now: float) -> str:
        t = deployment_settings
        insert = self._insert(t).values(name=name, value=value, created_at=now)
        async with self._writer.begin() as conn:
            await conn.execute(insert.on_conflict_do_nothing(index_elements=["name"]))
            stored = (await conn.execute(sa.select(t.c.value).where(t.c.name == name))).scalar()
        return str(stored)
