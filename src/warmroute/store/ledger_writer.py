"""Appending usage rows to a SQLite ledger: one journal line on the request's path, the
database committed behind it.

Every answer the gateway relays writes one ledger row before its last bytes leave, so the write
is on the latency path of every request. A SQLite commit (four pages, six file locks) cost
~160 us on a request's path here, and handing the row to a thread and waiting for its commit
~360 us (the thread's wake-up and the interpreter lock going back and forth). So a row is made
durable by one append to this process's journal file beside the database (`os.write`, tens of
microseconds), and a writer thread commits the journaled rows to the database behind it —
whatever came within `COMMIT_WINDOW_S` of the first, in one transaction — retrying while the
database is locked or failing (the rows wait in the journal, none is lost). The window keeps
the thread from waking (and taking the interpreter lock) once per request: it commits after a
burst, when the event loop has gone quiet, unless a reader is waiting (`flush`). A journaled
row survives the process being killed at any moment (it is in the OS's hands, as a WAL commit
with `synchronous = NORMAL` is); an OS crash or power loss may lose the last moments' rows.

Journals are `<database>.ledger-<pid>-<random>.journal`, each locked (`flock`) by the process
that writes it. `fold_orphan_journals` commits every journal whose lock it can take (its process
is gone) with INSERT OR IGNORE — a row already committed before the crash is not counted twice —
and deletes it; the store does so when it opens. A writer empties its own journal whenever
every row in it is committed (checked every `TRUNCATE_ROWS` rows, and on close). Readers:
`flush` waits until every row recorded so far is committed (the ledger's summaries call it, so
a process reads its own writes); `journaled_rows` reads the rows of every journal beside a
database (other processes' rows not committed yet). A row id is recorded at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from warmroute import jsoncodec
from warmroute.errors import StoreUnavailable
from warmroute.store.base import UsageRecord

log = logging.getLogger(__name__)
COLUMNS = ("id", "time", "day", "key_id", "team", "model", "engine_id", "surface",
           "prompt_tokens", "cached_tokens", "completion_tokens", "cost_in_usd_ticks")
INSERT = (f"INSERT OR IGNORE INTO usage_ledger ({', '.join(COLUMNS)}) "
          f"VALUES ({', '.join('?' for _ in COLUMNS)})")
BUSY_TIMEOUT_MS = 10_000
MAX_BATCH = 512
TRUNCATE_ROWS = 1024
RETRY_S = 0.5  # after a failed commit, the rows are tried again this much later
# Rows that come this soon after the first share its commit. Readers in this process wait for
# their own rows (`flush`), so the window only delays what other processes see; a longer one
# costs fewer commits: 100 ms against 20 ms took the gateway's CPU per request -8 % here.
COMMIT_WINDOW_S = 0.1
Row = tuple[object, ...]


@dataclass
class Flush:
    """A reader waiting until every row queued before it is committed."""

    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


def journal_paths(database: Path) -> list[Path]:
    return sorted(database.parent.glob(f"{database.name}.ledger-*.journal"))


def read_journal(path: Path) -> list[Row]:
    """The rows of one journal, in the order written (a torn last line is not a row)."""
    rows: list[Row] = []
    for line in path.read_bytes().split(b"\n"):
        with contextlib.suppress(ValueError):
            row = jsoncodec.loads(line)
            if isinstance(row, list) and len(row) == len(COLUMNS):
                rows.append(tuple(row))
    return rows


def journaled_rows(database: Path) -> list[Row]:
    """Every row in the journals beside `database` (committed already or not), per journal in
    the order written."""
    return [row for path in journal_paths(database) for row in read_journal(path)]


def connect(database: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def commit(conn: sqlite3.Connection, rows: list[Row]) -> sqlite3.Error | None:
    """Commit `rows` in one transaction (a row whose id is there already is skipped)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT, rows)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return exc
    return None


def fold_orphan_journals(database: Path) -> int:
    """Commit the rows of every journal beside `database` whose writer is gone, then delete it;
    returns how many rows were journaled there. A journal that cannot be committed stays."""
    paths = journal_paths(database)
    if not paths:
        return 0
    conn = connect(database)
    try:
        return sum(fold_journal(path, conn) for path in paths)
    finally:
        conn.close()


def fold_journal(path: Path, conn: sqlite3.Connection) -> int:
    """One journal committed and deleted if its writer is gone (its lock can be taken)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return 0  # folded by another process meanwhile
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rows = read_journal(path)
        error = commit(conn, rows) if rows else None
        if error is not None:
            log.warning("ledger journal %s not committed yet: %s", path.name, error)
            return 0
        path.unlink(missing_ok=True)
        return len(rows)
    except BlockingIOError:  # its process is alive and writing it
        return 0
    finally:
        os.close(fd)


class LedgerWriter:
    """This process's journal and the thread that commits it; `close` commits what is queued,
    then stops the thread (and removes the journal once every row in it is committed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = path.with_name(
            f"{path.name}.ledger-{os.getpid()}-{secrets.token_hex(4)}.journal")
        self._fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock = threading.Lock()  # an append and the emptying of the journal
        self._appended = 0  # rows in the journal now
        self._queue: queue.SimpleQueue[Row | Flush | None] = queue.SimpleQueue()
        self._urgent = threading.Event()  # a reader waits, or the writer stops: commit now
        self._thread = threading.Thread(target=self._run, name="warmroute-ledger", daemon=True)
        self._thread.start()

    async def record(self, row: UsageRecord, day: str) -> None:
        """Durable on return: the row is in the journal (the database follows)."""
        values = (row.id, row.time, day, row.key_id, row.team, row.model, row.engine_id,
                  row.surface, row.prompt_tokens, row.cached_tokens, row.completion_tokens,
                  row.cost_in_usd_ticks)
        line = jsoncodec.dumps(values) + b"\n"
        try:
            with self._lock:
                os.write(self._fd, line)
                self._appended += 1
        except OSError as exc:
            raise StoreUnavailable(f"the usage ledger could not be written: {exc}") from exc
        self._queue.put(values)

    async def flush(self) -> None:
        """Return once every row recorded before is committed; `StoreUnavailable` if the
        database refused them this time (they stay journaled and are tried again)."""
        loop = asyncio.get_running_loop()
        flush = Flush(loop.create_future(), loop)
        self._queue.put(flush)
        self._urgent.set()
        await asyncio.shield(flush.future)

    async def close(self) -> None:
        self._queue.put(None)
        self._urgent.set()
        await asyncio.to_thread(self._thread.join, 30)
        os.close(self._fd)  # releases the lock: a journal left with rows is folded later

    def _run(self) -> None:
        conn = connect(self.path)
        pending: list[Row] = []
        committed = 0  # rows of the journal now that are in the database
        try:
            while True:
                batch, flushes, stop = self._take(pending)
                pending.extend(batch)
                error = commit(conn, pending) if pending else None
                if error is None:
                    committed += len(pending)
                    pending = []
                else:
                    log.warning("ledger rows not committed yet (%d waiting): %s",
                                len(pending), error)
                for flush in flushes:
                    settle(flush, error)
                if error is None and (committed >= TRUNCATE_ROWS or stop):
                    committed = self._empty_journal(committed, remove=stop)
                if stop:
                    return
        finally:
            conn.close()

    def _take(self, pending: list[Row]) -> tuple[list[Row], list[Flush], bool]:
        """What is queued (waiting for the first item; at most `RETRY_S` while rows wait)."""
        batch: list[Row] = []
        flushes: list[Flush] = []
        try:
            item = self._queue.get(timeout=RETRY_S) if pending else self._queue.get()
        except queue.Empty:
            return batch, flushes, False
        if self._urgent.wait(COMMIT_WINDOW_S):  # let the burst the row belongs to come in
            self._urgent.clear()
        while True:
            if item is None:
                return batch, flushes, True
            if isinstance(item, Flush):
                flushes.append(item)
            else:
                batch.append(item)
            if len(batch) >= MAX_BATCH:
                return batch, flushes, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, flushes, False

    def _empty_journal(self, committed: int, remove: bool) -> int:
        """Empty the journal if every row in it is committed; returns the committed rows still
        in it. On close (`remove`) an empty journal is deleted."""
        with self._lock:
            if self._appended != committed:
                return committed
            try:
                if remove:
                    self.journal.unlink(missing_ok=True)
                else:
                    os.ftruncate(self._fd, 0)
            except OSError as exc:
                log.warning("ledger journal not emptied: %s", exc)
                return committed
            self._appended = 0
            return 0


def settle(flush: Flush, error: sqlite3.Error | None) -> None:
    """Resolve the waiting reader's future on its own loop (a loop gone already is fine)."""

    def resolve() -> None:
        if flush.future.done():
            return
        if error is None:
            flush.future.set_result(None)
        else:
            flush.future.set_exception(
                StoreUnavailable(f"the usage ledger could not be written: {error}"))

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
        flush.loop.call_soon_threadsafe(resolve)
