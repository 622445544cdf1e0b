"""The store or Redis gone (issue 13, must show 4), in-process over scripted engines: a locked
SQLite file is 503 (gRPC UNAVAILABLE) with `retry-after` for what needs the store (a stored
response) while relayed answers go on, their ledger rows journaled and committed once the lock is
gone; a PostgreSQL connection the test itself breaks is 503 and leaves no row of the failed
requests; the test's own Redis killed, rate limits fail open to this process's own counters,
as README documents: never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from xai_sdk.proto import chat_pb2_grpc

from tests.conftest import Postgres, postgres_schema_url
from tests.gateway.extreme import grpc_request
from tests.gateway.inprocess import bearer, in_process_gateway, make_keys, until
from tests.gateway.scripted import ScriptedFleet, sse_payloads
from tests.procs import free_port
from warmroute.gateway.ratelimit import REDIS_RETRY_S, WINDOW_S
from warmroute.procs import RedisServer
from warmroute.store import backends, ledger_writer

BODY: dict[str, Any] = {"model": "scripted-model", "max_tokens": 5,
                        "messages": [{"role": "user", "content": "hi"}]}
UNAVAILABLE = {"code": "The service is currently unavailable"}


async def grpc_call(port: int) -> tuple[grpc.StatusCode, dict[str, str]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await chat_pb2_grpc.ChatStub(channel).GetCompletion(grpc_request(), timeout=30)
            return grpc.StatusCode.OK, {}
        except grpc.aio.AioRpcError as exc:
            return exc.code(), dict(exc.trailing_metadata() or ())


def count(database: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def test_a_locked_sqlite_store_is_503_for_stored_responses_and_loses_no_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "SQLITE_BUSY_TIMEOUT_MS", 300)  # a locked file fails fast
    monkeypatch.setattr(ledger_writer, "BUSY_TIMEOUT_MS", 300)
    database, port = tmp_path / "warmroute.db", free_port()
    async with in_process_gateway(ScriptedFleet("s1"), tmp_path, grpc_port=port) as gw:
        lock = sqlite3.connect(database, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            plain = await gw.chat(BODY)
            streamed = await gw.chat({**BODY, "stream": True})
            responses = await gw.http.post("/v1/responses", json={"input": "hi"})
            code, trailers = await grpc_call(port)
            elapsed = time.monotonic() - started
            assert count(database, "usage_ledger") == 0  # journaled, not committed yet
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        after = await gw.chat(BODY)
        usage = await gw.http.get("/v1/usage")  # waits for this gateway's rows
    assert responses.status_code == 503 and responses.headers["retry-after"] == "2"
    assert responses.json()["code"] == UNAVAILABLE["code"]
    assert plain.status_code == 200 and after.status_code == 200
    assert sse_payloads(streamed.content)[-1] == "[DONE]"
    assert code == grpc.StatusCode.OK, trailers
    assert elapsed < 10.0
    assert usage.status_code == 200
    assert (count(database, "usage_ledger"), count(database, "responses")) == (4, 0)


@pytest.fixture
def pg_url(postgres: Postgres) -> Iterator[str]:
    if postgres.url is None:
        pytest.skip(f"PostgreSQL not reachable: {postgres.reason}")
    schema = f"wr_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield postgres_schema_url(postgres.url, schema)
    finally:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def blocked_by(holder: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> list[int]:
    """The backends waiting for a lock this test's own `holder` connection holds (asked on
    another connection: a transaction sees one snapshot of the activity)."""
    rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                         (holder.info.backend_pid,)).fetchall()
    return [int(row[0]) for row in rows]


async def test_a_broken_postgresql_connection_is_503_and_writes_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    async with in_process_gateway(ScriptedFleet("p1"), tmp_path, database_url=pg_url) as gw:
        with psycopg.connect(pg_url) as holder, psycopg.connect(pg_url, autocommit=True) as admin:
            holder.execute("LOCK TABLE usage_ledger IN ACCESS EXCLUSIVE MODE")
            waiting = asyncio.ensure_future(gw.chat(BODY))
            await until(lambda: bool(blocked_by(holder, admin)), "the gateway's write to wait", 5)
            for pid in blocked_by(holder, admin):  # only the gateway's connection waits on it
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            broken = await asyncio.wait_for(waiting, 10)
            holder.rollback()
        after = await gw.chat(BODY)
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute("SELECT count(*) FROM usage_ledger").fetchone()
    assert broken.status_code == 503 and broken.headers["retry-after"] == "2"
    assert broken.json()["code"] == UNAVAILABLE["code"]
    assert after.status_code == 200  # a fresh connection, at once
    assert rows == (1,)


async def test_with_its_redis_killed_rate_limits_fail_open_to_local_counts(
    tmp_path: Path,
) -> None:
    while time.time() % WINDOW_S > WINDOW_S - 15:  # one rate-limit window for the whole test
        await asyncio.sleep(0.5)
    redis = RedisServer(tmp_path / "redis").start()
    back = RedisServer(tmp_path / "redis", port=redis.port)
    try:
        keys = await make_keys(tmp_path, limited={"team": "team-r", "rpm": 3})
        headers = bearer(keys["limited"][0])
        async with in_process_gateway(ScriptedFleet("r1"), tmp_path, redis_url=redis.url) as gw:

            async def send(n: int) -> list[int]:
                return [(await gw.http.post("/v1/chat/completions", json=BODY,
                                            headers=headers)).status_code for _ in range(n)]

            shared = await send(2)
            redis.kill()
            started = time.monotonic()
            local = await send(4)
            elapsed = time.monotonic() - started
            back.start()  # an empty Redis: its counters start again
            await asyncio.sleep(REDIS_RETRY_S + 0.2)
            again = await send(1)
    finally:
        redis.kill()
        back.kill()
    assert shared == [200, 200]
    # Counted in this process from the outage on: 3 more, then the limit.
    assert local == [200, 200, 200, 429]
    assert elapsed < 5.0
    assert again == [200]  # the shared counters again, as soon as Redis answers
