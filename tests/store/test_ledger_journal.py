"""The SQLite ledger's journal: a row is durable when `record` returns (journaled), committed by
the writer thread behind it; a killed gateway's journal is committed by the next store that
opens the file, each row once; a locked database delays rows and loses none."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.store.test_usage import DAY0, row
from warmroute.errors import StoreUnavailable
from warmroute.store import UsageTotals, ledger_writer, open_store
from warmroute.store.ledger_writer import COLUMNS, journal_paths, journaled_rows


def committed_ids(database: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM usage_ledger ORDER BY rowid")]


def journal_line(row_id: str, cost: int) -> bytes:
    values = [row_id, DAY0, "2023-11-15", "key_1", "team-a", "m1", "e1", "chat.completions",
              100, 40, 10, cost]
    assert len(values) == len(COLUMNS)
    return json.dumps(values).encode() + b"\n"


async def test_a_row_is_journaled_at_once_and_committed_behind_it(tmp_path: Path) -> None:
    database = tmp_path / "warmroute.db"
    store = await open_store(database)
    try:
        await store.usage.record(row("r1", DAY0 + 1))
        assert [r[0] for r in journaled_rows(database)] == ["r1"]  # durable on return
        totals = await store.usage.summary(0, "team")  # waits for this process's rows
        assert totals == [UsageTotals("team-a", 1, 100, 40, 10, 1_000)]
        assert committed_ids(database) == ["r1"]
    finally:
        await store.close()
    assert journal_paths(database) == []  # emptied and removed on close


async def test_the_journal_is_emptied_once_every_row_in_it_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_writer, "TRUNCATE_ROWS", 3)
    database = tmp_path / "warmroute.db"
    store = await open_store(database)
    try:
        for index in range(7):
            await store.usage.record(row(f"r{index}", DAY0 + index))
            await store.usage.summary(0, "team")  # one commit per row
        assert len(committed_ids(database)) == 7
        assert [r[0] for r in journaled_rows(database)] == ["r6"]  # emptied at 3 and 6 rows
    finally:
        await store.close()


async def test_a_killed_writers_journal_is_committed_once_by_the_next_store(
    tmp_path: Path
) -> None:
    """What a gateway killed mid-stride leaves: a journal whose rows may be committed already
    (r1) or not (r2, r3), and a torn last line. The next store commits each row once."""
    database = tmp_path / "warmroute.db"
    store = await open_store(database)
    await store.usage.record(row("r1", DAY0))
    await store.close()
    orphan = tmp_path / "warmroute.db.ledger-999999-dead.journal"
    orphan.write_bytes(journal_line("r1", 1_000) + journal_line("r2", 7) + journal_line("r3", 9)
                       + b'["r4", 1700')
    reopened = await open_store(database)
    try:
        assert committed_ids(database) == ["r1", "r2", "r3"]
        assert not orphan.exists()
        totals = await reopened.usage.summary(0, "team")
        assert totals == [UsageTotals("team-a", 3, 300, 120, 30, 1_016)]
    finally:
        await reopened.close()


async def test_a_live_writers_journal_is_left_to_it(tmp_path: Path) -> None:
    database = tmp_path / "warmroute.db"
    first = await open_store(database)
    try:
        await first.usage.record(row("r1", DAY0))
        second = await open_store(database)  # another process's store would do the same
        await second.close()
        assert [r[0] for r in journaled_rows(database)] == ["r1"]  # still first's journal
        await first.usage.summary(0, "team")
    finally:
        await first.close()
    assert committed_ids(database) == ["r1"]


async def test_a_locked_database_delays_rows_and_loses_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_writer, "BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr(ledger_writer, "RETRY_S", 0.05)
    database = tmp_path / "warmroute.db"
    store = await open_store(database)
    try:
        lock = sqlite3.connect(database, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            await store.usage.record(row("r1", DAY0))  # journaled: the lock does not matter
            await store.usage.record(row("r2", DAY0))
            assert time.monotonic() - started < 0.05
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.usage.summary(0, "team")
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        totals = await store.usage.summary(0, "team")
        assert totals == [UsageTotals("team-a", 2, 200, 80, 20, 2_000)]
    finally:
        await store.close()
    assert committed_ids(database) == ["r1", "r2"]


CHILD = textwrap.dedent("""
    import asyncio, os, signal, sys
    from tests.store.test_usage import DAY0, row
    from warmroute.store import open_store

    async def main() -> None:
        store = await open_store(sys.argv[1])
        for index in range(200):
            await store.usage.record(row(f"k{index}", DAY0 + index))
        print("recorded", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
""")


def test_rows_recorded_before_a_sigkill_are_all_there_once(tmp_path: Path) -> None:
    database = tmp_path / "warmroute.db"
    child = subprocess.run([sys.executable, "-c", CHILD, str(database)], capture_output=True,
                           text=True, timeout=120, cwd=Path(__file__).parents[2],
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert child.returncode == -signal.SIGKILL and child.stdout == "recorded\n", child.stderr

    async def reopen() -> list[UsageTotals]:
        store = await open_store(database)
        try:
            return await store.usage.summary(0, "team")
        finally:
            await store.close()

    import asyncio

    assert asyncio.run(reopen()) == [UsageTotals("team-a", 200, 20_000, 8_000, 2_000, 200_000)]
    assert sorted(committed_ids(database)) == sorted(f"k{i}" for i in range(200))
    assert journal_paths(database) == []
