"""What every part of the SQL store shares: an engine for reads and one for writing transactions
(`WRITE`: on SQLite `BEGIN IMMEDIATE`, see `backends.py`)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from warmroute.store.backends import WRITE


class Tables:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**WRITE)
