"""Persistence for the gateway: stored responses, deferred completions, API keys, usage ledger.

`open_store(url_or_path)` opens SQLite (a file path or `sqlite:///PATH`, the default) or
PostgreSQL (`postgresql://HOST:PORT/DB`), applies pending migrations, and returns a `Store`
(`base.py` states every contract). Nothing here knows HTTP, gRPC or the engines.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import sqlalchemy as sa

from warmroute.errors import StoreUnavailable
from warmroute.store.backends import database_url, default_store_path, make_engine
from warmroute.store.base import (
    DEFAULT_RESPONSE_TTL_S,
    ApiKey,
    DeferredCompletion,
    DeferredStatus,
    DuplicateId,
    GroupBy,
    Json,
    ResponseNotFound,
    Store,
    StoredResponse,
    UsageRecord,
    UsageTotals,
    hash_key,
    redact_key,
)
from warmroute.store.guard import guard_store
from warmroute.store.migrations import apply_migrations
from warmroute.store.sql import SqlStore

__all__ = [
    "DEFAULT_RESPONSE_TTL_S",
    "ApiKey",
    "DeferredCompletion",
    "DeferredStatus",
    "DuplicateId",
    "GroupBy",
    "Json",
    "ResponseNotFound",
    "Store",
    "StoreUnavailable",
    "StoredResponse",
    "UsageRecord",
    "UsageTotals",
    "default_store_path",
    "hash_key",
    "open_store",
    "redact_key",
]


async def open_store(
    url_or_path: str | os.PathLike[str], clock: Callable[[], float] = time.time
) -> Store:
    """Open the database, creating it (and a SQLite file's folder) if needed, and bring its
    schema up to date. `clock` stamps `schema_migrations.applied_at` only.

    Raises ValueError for an unsupported URL, `StoreUnavailable` when the database cannot be
    reached or its schema is newer than this code. The store's database errors become
    `StoreUnavailable` too (`guard.py`).
    """
    url = database_url(url_or_path)
    engine = make_engine(url)
    try:
        await apply_migrations(engine, clock)
    except (sa.exc.OperationalError, sa.exc.InterfaceError, OSError) as exc:
        await engine.dispose()
        where = url.render_as_string(hide_password=True)
        raise StoreUnavailable(f"cannot open the store at {where}: {exc}") from exc
    except BaseException:
        await engine.dispose()
        raise
    store = SqlStore(engine)
    await store.usage.fold_journals()  # rows a killed gateway had not committed yet
    return guard_store(store)
