"""Appending usage rows to a SQLite ledger off the request path's event loop, with group commit.

Every answer the gateway relays writes one ledger row before its last bytes leave, so the write
is on the latency path of every request. Through SQLAlchemy's async layer one SQLite insert
costs about a millisecond here; a plain `sqlite3` connection on a thread of its own appends a
row in tens of microseconds. `LedgerWriter.record` queues the row and waits for its commit;
the writer thread commits whatever is queued in one transaction (rows that arrive together share
it). The database runs in WAL mode with `synchronous = NORMAL` on this connection: a committed
row survives the process being killed at any moment (it is in the OS's hands); an OS crash or
power loss may lose the last moments' rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from warmroute.errors import StoreUnavailable
from warmroute.store.base import DuplicateId, UsageRecord

log = logging.getLogger(__name__)
COLUMNS = ("id", "time", "day", "key_id", "team", "model", "engine_id", "surface",
           "prompt_tokens", "cached_tokens", "completion_tokens", "cost_in_usd_ticks")
INSERT = (f"INSERT INTO usage_ledger ({', '.join(COLUMNS)}) "
          f"VALUES ({', '.join('?' for _ in COLUMNS)})")
BUSY_TIMEOUT_MS = 10_000
MAX_BATCH = 512


@dataclass
class Pending:
    values: tuple[object, ...]
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


class LedgerWriter:
    """One writer thread per store; `close` drains what is queued, then stops it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="warmroute-ledger", daemon=True)
        self._thread.start()

    async def record(self, row: UsageRecord, day: str) -> None:
        loop = asyncio.get_running_loop()
        pending = Pending((row.id, row.time, day, row.key_id, row.team, row.model, row.engine_id,
                           row.surface, row.prompt_tokens, row.cached_tokens,
                           row.completion_tokens, row.cost_in_usd_ticks),
                          loop.create_future(), loop)
        self._queue.put(pending)
        # Shielded: a request cancelled meanwhile still has its row written and waited for.
        await asyncio.shield(pending.future)

    async def close(self) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join, 30)

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        self._commit(conn, batch)
                        return
                    batch.append(item)
                self._commit(conn, batch)
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[Pending]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT, [p.values for p in batch])
            conn.execute("COMMIT")
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK")
            for pending in batch:  # one at a time, so only a duplicate fails
                self._commit_one(conn, pending)
            return
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            log.warning("ledger write failed: %s", exc)
            for pending in batch:
                settle(pending, StoreUnavailable(f"the usage ledger could not be written: {exc}"))
            return
        for pending in batch:
            settle(pending, None)

    def _commit_one(self, conn: sqlite3.Connection, pending: Pending) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(INSERT, pending.values)
            conn.execute("COMMIT")
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK")
            settle(pending, DuplicateId(f"usage row {pending.values[0]!r} is already recorded"))
            return
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            settle(pending, StoreUnavailable(f"the usage ledger could not be written: {exc}"))
            return
        settle(pending, None)


def settle(pending: Pending, error: Exception | None) -> None:
    """Resolve the waiting request's future on its own loop (a loop gone already is fine)."""

    def resolve() -> None:
        if pending.future.done():
            return
        if error is None:
            pending.future.set_result(None)
        else:
            pending.future.set_exception(error)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
        pending.loop.call_soon_threadsafe(resolve)
