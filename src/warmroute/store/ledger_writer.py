"""Appending usage rows to a SQLite ledger: on the caller's thread when the file is free, else
by a writer thread with group commit.

Every answer the gateway relays writes one ledger row before its last bytes leave, so the write
is on the latency path of every request. Through SQLAlchemy's async layer one SQLite insert
costs about a millisecond here; a plain `sqlite3` commit costs ~30 us (p50; p99 ~110 us), but
handing the row to a thread and waiting for its commit cost ~360 us per request (the thread's
wake-up and the interpreter lock going back and forth). So `LedgerWriter.record` first commits
on the event loop's own thread with a connection that never waits for a lock (`busy_timeout`
0) and never checkpoints; only when the file is busy (another writer holds it: another process,
the store's own connection) or that commit fails does the row go to the writer thread, which
waits for the lock (`BUSY_TIMEOUT_MS`), commits whatever is queued in one transaction, and
checkpoints the WAL for both (so no checkpoint's fsync ever runs on the event loop).
The database runs in WAL mode with `synchronous = NORMAL`: a committed row survives the process
being killed at any moment (it is in the OS's hands); an OS crash or power loss may lose the
last moments' rows.
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
CHECKPOINT_EVERY = 500  # rows committed on the loop between the writer thread's checkpoints
CHECKPOINT = "checkpoint"  # a queue item: checkpoint the WAL now


@dataclass
class Pending:
    values: tuple[object, ...]
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


class LedgerWriter:
    """One writer thread per store, and one connection on the thread that opened the writer
    (the event loop's); `close` drains what is queued, then stops the thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[Pending | str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="warmroute-ledger", daemon=True)
        self._thread.start()
        self._direct: sqlite3.Connection | None = None
        self._direct_thread = threading.get_ident()
        self._uncheckpointed = 0

    async def record(self, row: UsageRecord, day: str) -> None:
        values = (row.id, row.time, day, row.key_id, row.team, row.model, row.engine_id,
                  row.surface, row.prompt_tokens, row.cached_tokens, row.completion_tokens,
                  row.cost_in_usd_ticks)
        if self._commit_here(values):
            return
        loop = asyncio.get_running_loop()
        pending = Pending(values, loop.create_future(), loop)
        self._queue.put(pending)
        # Shielded: a request cancelled meanwhile still has its row written and waited for.
        await asyncio.shield(pending.future)

    def _commit_here(self, values: tuple[object, ...]) -> bool:
        """Commit the row on this thread if the file is free at once; False: the writer
        thread must (busy, or this connection failed). A duplicate id is `DuplicateId`."""
        if threading.get_ident() != self._direct_thread:
            return False
        try:
            conn = self._direct
            if conn is None:
                conn = self._direct = self._open_direct()
            conn.execute(INSERT, values)  # its own transaction; busy_timeout 0: a held lock
        except sqlite3.IntegrityError:    # fails at once
            raise DuplicateId(f"usage row {values[0]!r} is already recorded") from None
        except sqlite3.Error:
            return False
        self._uncheckpointed += 1
        if self._uncheckpointed >= CHECKPOINT_EVERY:
            self._uncheckpointed = 0
            self._queue.put(CHECKPOINT)
        return True

    def _open_direct(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the writer thread checkpoints
        return conn

    async def close(self) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join, 30)
        if self._direct is not None:
            self._direct.close()
            self._direct = None

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                if first == CHECKPOINT:
                    checkpoint(conn)
                    continue
                assert isinstance(first, Pending)
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        self._commit(conn, batch)
                        return
                    if isinstance(item, Pending):
                        batch.append(item)
                    else:
                        checkpoint(conn)
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


def checkpoint(conn: sqlite3.Connection) -> None:
    """Move the WAL's pages into the database without blocking anyone (best effort: a busy
    reader only delays it to the next one)."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error as exc:
        log.info("ledger checkpoint deferred: %s", exc)


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
