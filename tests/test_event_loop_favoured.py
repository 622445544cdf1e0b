"""A gateway hands the interpreter lock back to its event loop every 0.5 ms
(`procs.favour_the_event_loop`): its worker threads' Python (the `/metrics` exposition, the
timeline, the dashboard) holds the loop for at most that long at a time, not CPython's 5 ms."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from warmroute.app import gateway_command
from warmroute.app.cli import build_parser
from warmroute.procs import LOOP_SWITCH_INTERVAL_S


@pytest.fixture
def switch_interval_kept() -> Iterator[None]:
    before = sys.getswitchinterval()
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.usefixtures("switch_interval_kept")
def test_the_gateway_serves_with_a_short_switch_interval(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sys.setswitchinterval(0.005)
    served_with: list[float] = []

    def run_server(config: Any) -> None:
        served_with.append(sys.getswitchinterval())

    monkeypatch.setattr(gateway_command, "run_server", run_server)
    args = build_parser().parse_args(
        ["gateway", "--engine", "e1=http://127.0.0.1:9", "--port", "0", "--data-dir",
         str(tmp_path), "--no-api-keys"])
    assert gateway_command.run_gateway(args) == 0
    assert served_with == [pytest.approx(LOOP_SWITCH_INTERVAL_S)]
    assert LOOP_SWITCH_INTERVAL_S == 0.0005
