"""Deferred completions survive their gateway (issue 13, must show 5): bounded in number (per
team and in all: 429 / RESOURCE_EXHAUSTED beyond); an entry whose gateway was killed is FAILED
(ABORTED over gRPC) within a bound, never PENDING for ever; a result and its charge are one
write, so after a SIGKILL the ledger holds a row for every DONE entry and none for a FAILED one.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from xai_sdk.proto import chat_pb2_grpc, deferred_pb2

from tests.gateway.extreme import grpc_request
from tests.gateway.harness import MODEL, Fleet
from tests.gateway.inprocess import in_process_gateway, ledger
from tests.gateway.scripted import ScriptedFleet
from tests.procs import Proc, free_port, start
from warmroute.gateway.deferred import STALE_AFTER_S, SWEEP_S
from warmroute.store import DeferredStatus, open_store

BODY: dict[str, Any] = {"model": "scripted-model", "max_tokens": 5, "deferred": True,
                        "messages": [{"role": "user", "content": "hi"}]}
POLL = "/v1/chat/deferred-completion/"
BOUND_S = STALE_AFTER_S + SWEEP_S + 5.0  # the bound, and time for the gateway to start


async def test_deferred_requests_are_bounded_per_team_and_in_all(tmp_path: Path) -> None:
    engines = ScriptedFleet("d1")
    engines["d1"].hold = asyncio.Event()
    port = free_port()
    async with in_process_gateway(engines, tmp_path, grpc_port=port, max_deferred=3,
                                  max_deferred_per_team=2) as gw:
        started = [await gw.chat(BODY) for _ in range(3)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                await chat_pb2_grpc.ChatStub(channel).StartDeferredCompletion(grpc_request())
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
        engines["d1"].hold.set()
    assert [r.status_code for r in started] == [200, 200, 429]
    assert started[2].headers["retry-after"] == "5"
    assert started[2].json()["error"] == (
        "this team already has 2 deferred requests pending; retry when one has finished")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_killed_gateways_entries_are_failed_when_another_starts(tmp_path: Path) -> None:
    store = await open_store(str(tmp_path / "warmroute.db"))
    now = time.time()
    try:
        await store.deferred.create("killed", "team-a", now - 60, now + 600, runner="gone")
        await store.deferred.create("running", "team-a", now, now + 600, runner="alive")
    finally:
        await store.close()
    async with in_process_gateway(ScriptedFleet("d1"), tmp_path):
        store = await open_store(str(tmp_path / "warmroute.db"))
        try:
            killed = await store.deferred.get("killed", "team-a", time.time())
            running = await store.deferred.get("running", "team-a", time.time())
        finally:
            await store.close()
    assert killed is not None and killed.status is DeferredStatus.FAILED
    assert killed.error == {"code": "ABORTED", "status": 503,
                            "http_code": "The service is currently unavailable",
                            "message": "the gateway running this deferred request stopped "
                                       "before it finished; start it again"}
    assert running is not None and running.status is DeferredStatus.PENDING  # beating still


def gateway_process(fleet: Fleet, data_dir: Path, port: int, grpc_port: int) -> Proc:
    args = ["gateway", "--engine", f"e1={fleet.url('e1')}", "--port", str(port),
            "--grpc-port", str(grpc_port), "--data-dir", str(data_dir), "--no-api-keys"]
    proc = start(args, data_dir / f"gateway-{time.monotonic_ns()}.log", port)
    proc.wait_healthy(timeout=60)
    return proc


def chat(text: str, max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens, "temperature": 0, "deferred": True}


async def start_some(url: str, grpc_port: int) -> list[tuple[str, str]]:
    """Deferred requests on both surfaces, short ones (done before the kill) and long ones."""
    started: list[tuple[str, str]] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client, grpc.aio.insecure_channel(
        f"127.0.0.1:{grpc_port}"
    ) as channel:
        stub = chat_pb2_grpc.ChatStub(channel)
        for index, max_tokens in enumerate((1, 1000, 1000, 1)):
            text = f"Deferred request {index}: tell a long story about caches."
            if index % 2 == 0:
                answer = await client.post("/v1/chat/completions", json=chat(text, max_tokens))
                started.append(("rest", answer.json()["request_id"]))
            else:
                reply = await stub.StartDeferredCompletion(
                    grpc_request(text=text, max_tokens=max_tokens, temperature=0.0))
                started.append(("grpc", reply.request_id))
        await asyncio.sleep(1.0)  # the short ones finish; the long ones are running
    return started


def entries(database: Path) -> dict[str, tuple[str, Any]]:
    with closing(sqlite3.connect(database)) as conn:
        rows = conn.execute("SELECT request_id, status, result FROM deferred_completions")
        return {request_id: (status, result) for request_id, status, result in rows}


async def read_back(url: str, grpc_port: int, started: list[tuple[str, str]]) -> list[Any]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client, grpc.aio.insecure_channel(
        f"127.0.0.1:{grpc_port}"
    ) as channel:
        stub, seen = chat_pb2_grpc.ChatStub(channel), []
        for surface, request_id in started:
            if surface == "rest":
                answer = await client.get(POLL + request_id)
                seen.append(answer.status_code)
                continue
            try:
                reply = await stub.GetDeferredCompletion(
                    deferred_pb2.GetDeferredRequest(request_id=request_id))
                seen.append(deferred_pb2.DeferredStatus.Name(reply.status))
            except grpc.aio.AioRpcError as exc:
                seen.append(exc.code().name)
        return seen


@pytest.mark.slow
async def test_sigkill_during_deferred_completions_then_restart(
    fleet: Fleet, tmp_path: Path
) -> None:
    port, grpc_port = free_port(), free_port()
    database = tmp_path / "warmroute.db"
    first = gateway_process(fleet, tmp_path, port, grpc_port)
    try:
        started = await start_some(first.url, grpc_port)
    finally:
        first.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    second = gateway_process(fleet, tmp_path, port, grpc_port)
    try:
        while any(s == DeferredStatus.PENDING for s, _ in entries(database).values()):
            assert time.monotonic() - killed_at < BOUND_S, "an entry stayed PENDING"
            await asyncio.sleep(0.2)
        seen = await read_back(second.url, grpc_port, started)
    finally:
        second.kill(signal.SIGTERM)
    ended = entries(database)
    done = [request_id for request_id, (status, _) in ended.items() if status == "DONE"]
    assert sorted(status for status, _ in ended.values()) == ["DONE", "DONE", "FAILED",
                                                             "FAILED"]
    assert seen == [200, "ABORTED", 503, "DONE"]  # short ones done, long ones killed
    rows = ledger(database)
    assert len(rows) == len(done) == 2  # one charge per result, none for a failed entry
    assert sorted(r.completion_tokens for r in rows) == [1, 1]
