"""Must show 1 of issue 7: `warmroute bench fleet` with 3 simulated engines and ~20 chats,
warmroute against the round-robin floor, as real processes started and stopped here; and the
fault scenario, where only streams the killed engine was already sending may fail."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from warmroute.app.cli import main
from warmroute.bench.fleet import EngineParams
from warmroute.bench.fleet_bench import BenchParams, run_fleet_bench, warmroute_targets
from warmroute.bench.summary import COLUMNS
from warmroute.bench.workload import ChatParams, synthetic_chats

pytestmark = pytest.mark.slow

ENGINE_FLAGS = ["--engines", "3", "--prefill-ms-per-token", "0.5", "--decode-ms-per-token", "5"]


def children() -> set[int]:
    """Live child processes of this (test) process."""
    found: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").glob("*"):
        with contextlib.suppress(OSError):
            found |= {int(c) for c in (task / "children").read_text().split()}
    return {pid for pid in found if Path(f"/proc/{pid}").exists()
            and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}


def test_smoke_warmroute_beats_round_robin(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    before = children()
    code = main(["bench", "fleet", *ENGINE_FLAGS, "--conversations", "20", "--turns", "4",
                 "--rate", "4", "--think-time", "0.5", "--out", str(tmp_path),
                 "--no-progress", "--targets", "warmroute,round-robin"])
    printed = capsys.readouterr().out
    assert code == 0
    assert children() <= before, "the bench left processes running"
    for column in COLUMNS:
        assert column in printed
    runs = {run["target"]: run for run in json.loads((tmp_path / "results.json").read_text())
            ["runs"]}
    assert set(runs) == {"warmroute", "round-robin"}
    for run in runs.values():
        summary = run["summary"]
        assert summary["requests"] == 80 and summary["failed"] == 0
        assert set(summary["per_engine"]) == {"engine-1", "engine-2", "engine-3"}
        assert summary["ttft_p50_s"] > 0 and summary["throughput_rps"] > 0
    warm, floor = runs["warmroute"]["summary"], runs["round-robin"]["summary"]
    assert warm["hit_rate"] > floor["hit_rate"], (warm["hit_rate"], floor["hit_rate"])
    assert warm["sticky"] > floor["sticky"]
    for name in ("hit_rate_over_time.png", "ttft_cdf.png", "requests_per_engine.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_fault_fails_only_streams_the_killed_engine_was_sending(tmp_path: Path) -> None:
    before = children()
    work = synthetic_chats(ChatParams(conversations=12, turns=4, think_s=0.3, rate=6.0))
    params = BenchParams(
        engines=EngineParams(count=3, prefill_ms_per_token=0.5, decode_ms_per_token=5.0),
        scenarios=("fault",), fault_at_s=1.0, fault_engine=0, progress=False,
    )
    [run] = run_fleet_bench(work, [warmroute_targets(0.25)["warmroute"]], params, tmp_path,
                            Console(quiet=True))
    assert children() <= before, "the bench left processes running"
    assert run.killed == "engine-1" and run.fault_at_s is not None
    assert len(run.records) == work.num_requests
    late = [r for r in run.records if r.sent_s > run.fault_at_s + 0.05]
    assert late and all(r.ok and r.engine != "engine-1" for r in late)
    for failed in (r for r in run.records if not r.ok):
        assert failed.engine == "engine-1" and failed.sent_s < run.fault_at_s
