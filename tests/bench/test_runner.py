"""The runner against real (in-process) simulated engines, and the summary it feeds."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import free_port
from warmroute.api.engine_app import create_engine_app
from warmroute.bench.client import RequestRecord
from warmroute.bench.report import BenchRun, plot_all, read_results, results_table, write_results
from warmroute.bench.runner import RunOptions, Target, run_workload
from warmroute.bench.summary import COLUMNS, quantile, summarize
from warmroute.bench.workload import ChatParams, synthetic_chats
from warmroute.config import EngineConfig
from warmroute.engine.engine import Engine
from warmroute.engine.sim_profile import sim_profile
from warmroute.procs import BackgroundServer

PROFILE = sim_profile("cpu", prefill_ms_per_token=0.05, decode_ms_per_step=2.0)


@pytest.fixture(scope="module")
def engine_url() -> Iterator[str]:
    engine = Engine.from_config(EngineConfig(model="sim", cache_blocks=2048), PROFILE)
    server = BackgroundServer(create_engine_app(engine, "sim-1"), "127.0.0.1", free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def chats(**changes: float) -> ChatParams:
    base = {"conversations": 6, "turns": 3, "system_tokens": 64, "user_tokens": 20,
            "think_s": 0.05, "rate": 30.0, "max_tokens": 4}
    return ChatParams(**{**base, **changes})  # type: ignore[arg-type]


def test_records_every_request_with_engine_ttft_and_usage(engine_url: str) -> None:
    work = synthetic_chats(chats())
    result = asyncio.run(run_workload(work, Target("direct", engine_url),
                                      RunOptions(progress=False)))
    records = result.records
    assert len(records) == work.num_requests == 18
    assert all(r.ok and r.status == 200 and r.engine == "sim-1" for r in records)
    assert all(r.ttft_s is not None and r.e2e_s is not None and 0 < r.ttft_s <= r.e2e_s
               for r in records)
    assert all(r.completion_tokens == 4 for r in records)
    later = [r for r in records if r.turn > 0]
    first = {r.conv_id: r for r in records if r.turn == 0}
    # a later turn re-sends the earlier prompt and the reply: it hits beyond the first prompt
    assert all(r.cached_tokens > first[r.conv_id].prompt_tokens - 16 for r in later)
    assert [r.sent_s for r in records] == sorted(r.sent_s for r in records)


def test_closed_loop_keeps_at_most_c_conversations_going(engine_url: str) -> None:
    work = synthetic_chats(chats(rate=0.5))  # arrival times would take ~12 s
    started = time.monotonic()
    result = asyncio.run(run_workload(work, Target("direct", engine_url),
                                      RunOptions(concurrency=2, progress=False)))
    assert time.monotonic() - started < 8
    assert len(result.records) == 18 and all(r.ok for r in result.records)


def test_fault_runs_once_at_its_time(engine_url: str) -> None:
    calls: list[float] = []
    work = synthetic_chats(chats(rate=10.0))
    started = time.perf_counter()
    result = asyncio.run(run_workload(
        work, Target("direct", engine_url), RunOptions(fault_at_s=0.3, progress=False),
        fault=lambda: calls.append(time.perf_counter() - started)))
    assert len(calls) == 1 and 0.28 < calls[0] < 1.0
    assert result.fault_at_s is not None and 0.28 < result.fault_at_s < 1.0


def test_a_dead_target_fails_every_request_without_hanging() -> None:
    work = synthetic_chats(chats(conversations=2, turns=2))
    url = f"http://127.0.0.1:{free_port()}"
    result = asyncio.run(run_workload(work, Target("dead", url), RunOptions(progress=False)))
    assert len(result.records) == 4
    assert all(not r.ok and r.status == 0 and "ConnectError" in (r.error or "")
               for r in result.records)


def record(conv: str, turn: int, engine: str | None, prompt: int, cached: int,
           ttft: float | None, ok: bool = True) -> RequestRecord:
    return RequestRecord(conv, turn, float(turn), 200 if ok else 0, ok, engine, ttft,
                         ttft, prompt, cached, 4)


def test_summary_figures() -> None:
    records = [
        record("a", 0, "e1", 100, 0, 0.10), record("a", 1, "e1", 200, 96, 0.02),
        record("b", 0, "e2", 100, 0, 0.30), record("b", 1, "e1", 200, 0, 0.40),
        record("c", 0, None, 0, 0, None, ok=False),
    ]
    s = summarize("t", "normal", records, 2.0, ["e1", "e2", "e3"])
    assert (s.requests, s.failed) == (5, 1)
    assert s.hit_rate == pytest.approx(96 / 600)
    assert s.ttft_p50_s == pytest.approx(0.10) and s.ttft_p99_s == pytest.approx(0.40)
    assert s.throughput_rps == pytest.approx(2.0)
    assert s.per_engine == {"e1": 3, "e2": 1, "e3": 0}
    assert s.max_over_avg == pytest.approx(3 / (4 / 3))
    assert s.sticky == pytest.approx(0.5)  # a stayed on e1, b moved
    assert set(s.row()) == set(COLUMNS)
    assert math.isnan(quantile([], 0.5))


def test_results_round_trip_table_and_plots(tmp_path: Path) -> None:
    runs = [BenchRun("warmroute", "normal", ["e1", "e2"],
                     [record("a", 0, "e1", 100, 0, 0.1), record("a", 1, "e1", 200, 96, 0.02)],
                     3.0),
            BenchRun("round-robin", "fault", ["e1", "e2"],
                     [record("a", 0, "e2", 100, 0, 0.1), record("a", 1, "e1", 200, 0, 0.2)],
                     3.0, fault_at_s=1.0, killed="e2")]
    write_results(tmp_path / "results.json", {"workload": "x"}, runs)
    meta, again = read_results(tmp_path / "results.json")
    assert meta == {"workload": "x"}
    assert [r.summary for r in again] == [r.summary for r in runs]
    table = results_table(again, "t")
    assert [c.header for c in table.columns] == list(COLUMNS)
    paths = plot_all(again, tmp_path)
    assert [p.name for p in paths] == ["hit_rate_over_time.png", "ttft_cdf.png",
                                       "requests_per_engine.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
