"""`bench overhead`'s process times: CPU from stat's ticks, run-queue waits from each thread's
schedstat."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from warmroute.bench.overhead import ProcessTimes, RouterPath, Spent, process_times, report


def fake_proc(root: Path, pid: int, threads: dict[str, str | None], stat: str) -> None:
    """`root/<pid>` with `stat` and one task folder per thread (its schedstat, or none)."""
    base = root / str(pid)
    (base / "task").mkdir(parents=True)
    (base / "stat").write_text(stat)
    for tid, schedstat in threads.items():
        (base / "task" / tid).mkdir()
        if schedstat is not None:
            (base / "task" / tid / "schedstat").write_text(schedstat)


STAT = "42 (py) thon) S " + " ".join(["0"] * 10) + " 250 150 0 0\n"  # utime 250, stime 150


TICKS = os.sysconf("SC_CLK_TCK")


def test_cpu_is_stat_ticks_and_waits_are_each_threads_schedstat(tmp_path: Path) -> None:
    fake_proc(tmp_path, 42, {"42": "1500000000 250000000 10\n", "43": "500000000 50000000 3\n"},
              STAT)  # the ")" inside the process name is skipped
    assert process_times(42, tmp_path) == ProcessTimes(400 / TICKS, {"42": 0.25, "43": 0.05})


def test_without_schedstat_there_is_no_wait(tmp_path: Path) -> None:
    fake_proc(tmp_path, 42, {"42": None}, STAT)
    assert process_times(42, tmp_path) == ProcessTimes(400 / TICKS, None)


def test_a_wait_counts_threads_that_began_and_not_those_that_ended() -> None:
    before = ProcessTimes(1.0, {"1": 0.25, "2": 0.5})
    after = ProcessTimes(3.0, {"1": 1.0, "3": 0.125})  # 2 ended, 3 began
    assert after - before == Spent(2.0, 0.875)
    assert (ProcessTimes(3.0) - ProcessTimes(1.0)).wait_s is None


def test_this_process_time_grows_with_work_on_a_thread() -> None:
    if not Path(f"/proc/{os.getpid()}/task").is_dir():
        pytest.fail("this suite runs on Linux, where /proc exists")
    before = process_times(os.getpid())

    def spin() -> None:
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass

    worker = threading.Thread(target=spin)
    worker.start()
    worker.join()
    spent = process_times(os.getpid()) - before
    # The spinning thread ended: what it spent stays counted (to the clock tick, each side).
    assert spent.cpu_s >= 0.05 - 2 / TICKS - 1e-9
    if Path(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/schedstat").exists():
        assert spent.wait_s is not None and spent.wait_s >= 0.0
    else:  # a kernel without schedstat: no wait, not a made-up one
        assert spent.wait_s is None


def test_the_report_gives_cpu_and_wait_per_thousand_requests() -> None:
    direct = RouterPath("engine (direct)", "http://127.0.0.1:1", None, None,
                        json_s=[0.010] * 10, stream_s=[0.020] * 10)
    router = RouterPath("router", "http://127.0.0.1:2", None, 7,
                        json_s=[0.011] * 10, stream_s=[0.022] * 10, cpu_s=0.04, wait_s=0.01)
    blind = RouterPath("blind", "http://127.0.0.1:3", None, 8,
                       json_s=[0.012] * 10, stream_s=[0.023] * 10, cpu_s=0.02, wait_s=None)
    rows = report([direct, router, blind], rounds=10, tokens=16)
    assert rows[0]["cpu_s_per_1000"] == pytest.approx(2.0)  # 0.04 s over 20 requests
    assert rows[0]["wait_s_per_1000"] == pytest.approx(0.5)
    assert rows[0]["json"]["p50_ms"] == pytest.approx(1.0)
    assert rows[0]["stream"]["p50_ms"] == pytest.approx(2.0)
    assert rows[1]["wait_s_per_1000"] is None
