"""The offline reference figures of a `bench fleet` trace replay: ceiling, load-bounded oracle,
the cache conversion to 512-token blocks, and the line the report prints under the table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from rich.console import Console

from warmroute.app.cli import main
from warmroute.bench.commands import add_fleet_arguments, build_workload_and_trace, trace_reference
from warmroute.bench.fleet import EngineParams
from warmroute.bench.offline import reference_figures, replayed_requests, trace_cache_blocks
from warmroute.bench.report import print_report, read_results, write_results
from warmroute.engine.sim_profile import CPU, GPU
from warmroute.sim.traces import TraceRequest


def req(index: int, t_ms: int, blocks: list[int], conv: int, out: int = 100) -> TraceRequest:
    return TraceRequest(index, t_ms, 512 * len(blocks), out, tuple(blocks), conv)


def two_conversations() -> list[TraceRequest]:
    """Two conversations sharing block 1 (a system prompt), two turns each, a second apart."""
    return [req(0, 0, [1, 2], 0), req(1, 1000, [1, 3], 1),
            req(2, 2000, [1, 2, 4], 0), req(3, 3000, [1, 3, 5], 1)]


def test_ceiling_and_bounded_oracle_by_hand() -> None:
    # Ceiling: 0 + 1 block (1) + 2 blocks (1, 2) + 2 blocks (1, 3) of 1024 + 1024 + 1536 + 1536.
    # Oracle, 2 engines, ε = 0.25, bound on requests served (cap ⌈1.25·(served + 1)/2⌉):
    # r0 → engine 0 (nothing cached, lowest index); r1 → engine 0 (block 1, served 1 < cap 2);
    # r2: engine 0 is at the cap 2 → engine 1, cold; r3 → engine 0 (blocks 1, 3; cap 3).
    figures = reference_figures(two_conversations(), engines=2, cache_blocks_512=64,
                                epsilon=0.25, time_scale=1.0, profile=GPU)
    assert figures["ceiling"] == pytest.approx(2560 / 5120)
    assert figures["oracle_hit_rate"] == pytest.approx((512 + 1024) / 5120)
    assert figures["oracle_max_over_avg"] == pytest.approx(3 / 2)
    assert figures["oracle_sticky"] == pytest.approx(0.5)  # conversation 1 stayed, 0 moved
    assert figures["cache_blocks_512"] == 64
    assert figures["engines"] == 2 and figures["requests"] == 4


def test_unbounded_oracle_reaches_the_ceiling() -> None:
    figures = reference_figures(two_conversations(), engines=2, cache_blocks_512=64,
                                epsilon=10.0, time_scale=1.0, profile=GPU)
    assert figures["oracle_hit_rate"] == pytest.approx(figures["ceiling"]) == 0.5
    assert figures["oracle_max_over_avg"] == pytest.approx(2.0)  # all four on engine 0
    assert figures["oracle_sticky"] == 1.0


def test_cache_size_in_trace_blocks() -> None:
    assert trace_cache_blocks(100, 16, CPU) == 100 * 16 // 512 == 3
    assert trace_cache_blocks(4096, 16, GPU) == 128
    assert trace_cache_blocks(10, 16, CPU) == 1  # 160 tokens: still one block
    # Without --cache-blocks the simulated engine holds the profile's default tokens.
    assert trace_cache_blocks(None, 16, CPU) == (CPU.default_cache_tokens // 16) * 16 // 512
    assert trace_cache_blocks(None, 16, CPU) == 170
    assert trace_cache_blocks(None, 16, GPU) == 512


def test_replayed_requests_cap_answers_like_the_replay() -> None:
    reqs = [req(0, 0, [1], 0, out=500), req(1, 5, [2], 1, out=3), req(2, 9, [3], 2, out=0)]
    capped = replayed_requests(reqs, 16)
    assert [r.output_length for r in capped] == [16, 3, 1]
    assert [r.hash_ids for r in capped] == [r.hash_ids for r in reqs]


def write_trace(path: Path, requests: list[TraceRequest]) -> Path:
    path.write_text("".join(json.dumps({
        "timestamp": r.timestamp_ms, "input_length": r.input_length,
        "output_length": r.output_length, "hash_ids": list(r.hash_ids)}) + "\n"
        for r in requests))
    return path


def fleet_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_fleet_arguments(parser)
    return parser.parse_args(list(argv))


def test_fleet_reference_uses_the_trimmed_capped_requests(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.jsonl", [*two_conversations(), req(4, 4000, [9, 8], 2)])
    args = fleet_args("--workload", "trace", "--trace", str(trace), "--max-requests", "4",
                      "--engines", "2", "--cache-blocks", "4096", "--speedup", "2")
    workload, requests = build_workload_and_trace(args)
    assert requests is not None and len(requests) == 4 == workload.num_requests
    engines = EngineParams(count=2, cache_blocks=4096)
    figures = trace_reference(args, requests, engines)
    expected = reference_figures(replayed_requests(requests, 16), 2, 128, 0.25, 0.5, CPU)
    assert figures == expected
    assert figures["cache_blocks_512"] == 128
    assert figures["oracle_hit_rate"] == pytest.approx(0.3)
    chats, none = build_workload_and_trace(fleet_args("--conversations", "2"))
    assert none is None and chats.name == "chats"


REFERENCE = {"ceiling": 0.5, "oracle_hit_rate": 0.3, "oracle_max_over_avg": 1.5,
             "oracle_sticky": 0.5, "cache_blocks_512": 3, "engines": 2, "requests": 4}
LINE = ("reference (offline, same requests): ceiling 0.500, load-bounded longest-prefix oracle "
        "0.300 (max/avg 1.50, sticky 50.0%), cache 3 blocks of 512 tokens per engine")


def test_report_prints_the_reference_line_only_when_meta_has_one() -> None:
    console = Console(record=True, width=200)
    print_report(console, [], "t", {"workload": "trace:t", "reference": REFERENCE})
    assert LINE in console.export_text()
    for meta in (None, {"workload": "chats"}):
        plain = Console(record=True, width=200)
        print_report(plain, [], "t", meta)
        assert "reference" not in plain.export_text()


def test_bench_report_prints_the_reference_from_results_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "results.json"
    write_results(path, {"workload": "trace:t", "requests": 4, "reference": REFERENCE}, [])
    assert read_results(path)[0]["reference"] == REFERENCE
    assert main(["bench", "report", str(path), "--no-plots"]) == 0
    assert LINE in " ".join(capsys.readouterr().out.split())
