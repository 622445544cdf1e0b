"""From a URL or path to an async SQLAlchemy engine, with each backend's settings.

SQLite (the default, one file in the data dir): WAL so readers never wait for the writer,
`synchronous=FULL` so a commit is on disk when it returns, a busy timeout so concurrent
processes wait for the write lock instead of failing, and `BEGIN IMMEDIATE` for transactions
that write (`WRITE`), so a read-then-write transaction cannot lose a lock upgrade race.
PostgreSQL: `postgresql://…` through psycopg 3, with bounded waits: a connection is made within
`POSTGRES_CONNECT_TIMEOUT_S` and a lock is granted within `POSTGRES_LOCK_TIMEOUT_MS`, or the
operation fails (and `guard.py` answers 503), as SQLite's busy timeout does. Nothing above
this module knows which it is.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

WRITE: dict[str, Any] = {"warmroute_write": True}
"""Execution options for a transaction that writes (`engine.execution_options(**WRITE)`)."""

SQLITE_BUSY_TIMEOUT_MS = 10_000
POSTGRES_LOCK_TIMEOUT_MS = 10_000
POSTGRES_CONNECT_TIMEOUT_S = 5
POOL_TIMEOUT_S = 10.0
WAL_RETRY_S = 0.02
SQLITE_FILE_NAME = "warmroute.db"
POSTGRES_DRIVERS = ("postgres", "postgresql", "postgresql+psycopg")
SQLITE_DRIVERS = ("sqlite", "sqlite+aiosqlite")


def default_store_path(data_dir: Path) -> Path:
    """Where the embedded default keeps its database."""
    return data_dir / SQLITE_FILE_NAME


def database_url(url_or_path: str | os.PathLike[str]) -> sa.URL:
    """The engine URL for `sqlite:///path`, a plain file path, or `postgresql://…`.

    Raises ValueError for another scheme or an in-memory SQLite database (each pooled
    connection would see a different empty database).
    """
    text = os.fspath(url_or_path)
    if "://" not in text:
        if not text or text == ":memory:":
            raise ValueError("the store needs a database file path, not an in-memory database")
        return sa.URL.create("sqlite+aiosqlite", database=text)
    url = sa.make_url(text)
    if url.drivername in POSTGRES_DRIVERS:
        return url.set(drivername="postgresql+psycopg")
    if url.drivername in SQLITE_DRIVERS:
        if not url.database or url.database == ":memory:":
            raise ValueError("the store needs a database file path, not an in-memory database")
        return url.set(drivername="sqlite+aiosqlite")
    raise ValueError(
        f"unsupported store URL scheme {url.drivername!r}: use sqlite:///PATH, a file path, "
        "or postgresql://HOST:PORT/DB"
    )


def make_engine(url: sa.URL) -> AsyncEngine:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return _postgres_engine(url)


def _postgres_engine(url: sa.URL) -> AsyncEngine:
    connect_args = {} if "connect_timeout" in url.query else {
        "connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
    engine = create_async_engine(url, pool_pre_ping=True, pool_timeout=POOL_TIMEOUT_S,
                                 connect_args=connect_args)

    @sa.event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Outside a transaction, so that no rollback of the pool's undoes it.
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET lock_timeout = {POSTGRES_LOCK_TIMEOUT_MS}")
        cursor.close()
        dbapi_connection.autocommit = autocommit

    return engine


def _sqlite_engine(url: sa.URL) -> AsyncEngine:
    assert url.database is not None
    Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url)

    @sa.event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Transactions are begun by `on_begin` below, not by the sqlite3 module's guesswork.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("warmroute_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def switch_to_wal(cursor: Any) -> None:
    """`PRAGMA journal_mode = WAL`, retried while another connection holds the lock: switching
    a fresh database's journal needs it exclusively, and SQLite answers "database is locked"
    at once there rather than waiting out the busy timeout (seen with four openers at once)."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000.0
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as exc:  # the sqlite3 or the async adapter's OperationalError
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(WAL_RETRY_S)
