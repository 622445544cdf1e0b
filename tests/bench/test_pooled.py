"""`bench fleet --repeat`'s runs of one target pooled: figures over all their requests."""

from __future__ import annotations

from rich.console import Console

from warmroute.bench.client import RequestRecord
from warmroute.bench.report import BenchRun, pooled_runs, pooled_table, print_report
from warmroute.bench.summary import POOLED_COLUMNS


def record(conv: str, ttft_s: float | None, ok: bool = True, cached: int = 0) -> RequestRecord:
    return RequestRecord(conv, 0, 0.0, 200 if ok else 503, ok, "e1" if ok else None, ttft_s,
                         ttft_s, 100, cached, 8)


def run(target: str, ttfts: list[float], scenario: str = "normal",
        extra: list[RequestRecord] | None = None) -> BenchRun:
    records = [record(f"c{i}", t, cached=50) for i, t in enumerate(ttfts)] + (extra or [])
    return BenchRun(target, scenario, ["e1"], records, duration_s=10.0)


def test_the_repeats_of_a_target_are_pooled_and_a_single_run_is_not() -> None:
    runs = [
        run("warmroute #1", [0.1, 0.2, 0.3]),
        run("peer #1", [0.5]),
        run("warmroute #2", [0.4, 0.5, 0.6], extra=[record("x", None, ok=False)]),
        run("peer #2", [0.7]),
        run("alone", [0.9]),
        run("warmroute #1", [1.0], scenario="fault"),
    ]
    pooled = pooled_runs(runs)
    assert [(p.target, p.scenario, p.runs, p.requests, p.failed) for p in pooled] == [
        ("warmroute", "normal", 2, 7, 1), ("peer", "normal", 2, 2, 0)]
    mine = pooled[0]
    assert mine.ttft_p50_s == 0.3  # nearest rank over all six answered requests
    assert (mine.ttft_p90_s, mine.ttft_p99_s) == (0.6, 0.6)
    assert mine.run_p50s_s == (0.2, 0.5)
    assert mine.hit_rate == 0.5  # 50 of 100 prompt tokens cached in every answered request
    row = mine.row()
    assert (row["TTFT p50"], row["each run's p50"]) == ("300 ms", "200 ms / 500 ms")
    table = pooled_table(pooled)
    assert [c.header for c in table.columns] == list(POOLED_COLUMNS)


def test_the_report_prints_the_pooled_table_only_with_repeats() -> None:
    console = Console(record=True, width=200)
    print_report(console, [run("warmroute", [0.1]), run("peer", [0.2])], "one run each")
    assert "repeats pooled" not in console.export_text()
    console = Console(record=True, width=200)
    print_report(console, [run("warmroute #1", [0.1]), run("warmroute #2", [0.3])], "repeats")
    text = console.export_text()
    assert "repeats pooled" in text and "100 ms / 300 ms" in text
