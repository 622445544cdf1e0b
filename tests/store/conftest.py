"""Every store test runs twice: on a SQLite file under tmp_path and on PostgreSQL at
127.0.0.1:5432 (the `store_url` fixture of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from warmroute.store import Store, open_store


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()
