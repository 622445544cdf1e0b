"""The one place where a database's failures become `StoreUnavailable`, and where ids no row can
have are answered without a query.

`guard_store` wraps every async method of a store's parts: a database that is locked past its
busy timeout, a connection that broke or cannot be made, a pool with no connection to give, a
lock not granted in time, all raise `StoreUnavailable` (503 with `retry-after`, gRPC
UNAVAILABLE); a transaction that failed so was rolled back, so nothing of it is written. Other
errors (a duplicate id, a bug in a query) pass through as they are. Looking up an id that no
row can have (empty, over `MAX_ID_CHARS`, with NUL or another control character, or not text
UTF-8 can carry) answers "missing" at once: PostgreSQL refuses NUL in a query, SQLite would
search for it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from warmroute.errors import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_ID_CHARS = 256
RETRY_AFTER_S = 2.0
UNAVAILABLE: tuple[type[BaseException], ...] = (
    sa.exc.OperationalError,  # locked, connection refused or broken, lock/statement timeout
    sa.exc.InterfaceError,
    sa.exc.DisconnectionError,
    sa.exc.TimeoutError,  # no pooled connection within the pool's timeout
    sa.exc.PendingRollbackError,
    sqlite3.OperationalError,
    OSError,  # a refused or reset socket, a file that cannot be opened
)
# Methods whose first argument is an id, and what they answer for an id no row can have.
LOOKUPS: dict[str, dict[str, object]] = {
    "responses": {"get": None, "delete": False, "history": None},
    "deferred": {"get": None, "complete": False, "fail": False},
}
PARTS = ("responses", "deferred", "api_keys", "usage", "settings")


def impossible_id(value: object) -> bool:
    """Whether no stored row can have `value` as its id."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        return True
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return True
    return False


def unavailable(exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, UNAVAILABLE)


def guarded(method: Callable[..., Awaitable[Any]], missing: object = ...,
            ) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if missing is not ... and args and impossible_id(args[0]):
            return missing
        try:
            return await method(*args, **kwargs)
        except BaseException as exc:
            if not unavailable(exc):
                raise
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            log.warning("store unavailable in %s: %s", method.__qualname__, reason)
            raise StoreUnavailable(
                f"the store is unavailable ({type(exc).__name__}); retry shortly",
                retry_after=RETRY_AFTER_S,
            ) from exc

    return wrapper


def guard_part(part: T, lookups: dict[str, object] | None = None) -> T:
    """`part` with each public async method guarded (instance attributes shadow the class's)."""
    for name, _ in inspect.getmembers(type(part), inspect.iscoroutinefunction):
        if name.startswith("_"):
            continue
        bound = getattr(part, name)
        setattr(part, name, guarded(bound, (lookups or {}).get(name, ...)))
    return part


def guard_store(store: T) -> T:
    """The store with every part guarded, and its own methods (close, schema versions)."""
    for name in PARTS:
        part = getattr(store, name, None)
        if part is not None:
            guard_part(part, LOOKUPS.get(name))
    return guard_part(store)
