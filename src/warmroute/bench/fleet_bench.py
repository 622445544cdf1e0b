"""`warmroute bench fleet`: the same workload against every target, on fresh simulated engines.

For each scenario ("normal", and "fault": one engine SIGKILLed at the same moment of every run)
and each target (warmroute's sticky gateway, the round-robin floor, optionally warmroute
keyless and the peer routers), it starts the engines cold, starts the target in front of them,
drives the workload through it, and stops both. The result is one `BenchRun` per pair; the
report puts them side by side. Nothing here asserts; the smoke test and people judge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from warmroute.bench.fleet import EngineParams, Launched, SimFleet, launch_gateway
from warmroute.bench.report import BenchRun
from warmroute.bench.runner import DEFAULT_KEY_HEADER, RunOptions, Target, run_workload
from warmroute.bench.workload import Workload

SCENARIOS = ("normal", "fault")
SIM_MODEL = "sim"
Launcher = Callable[[SimFleet, Path], AbstractContextManager[Launched]]


@dataclass(frozen=True)
class TargetSpec:
    """A router to compare: how to start it over a fleet, and which header carries the key."""

    name: str
    key_header: str | None
    launch: Launcher


@dataclass(frozen=True)
class BenchParams:
    engines: EngineParams = field(default_factory=EngineParams)
    scenarios: tuple[str, ...] = ("normal",)
    fault_at_s: float | None = None
    fault_engine: int = 0
    epsilon: float = 0.25
    concurrency: int | None = None
    timeout_s: float = 300.0
    progress: bool = True


def warmroute_targets(epsilon: float, gateways: int = 1) -> dict[str, TargetSpec]:
    """warmroute (keyed by `x-grok-conv-id`), warmroute without keys, warmroute's stateless
    `hash` policy (keyed), and round-robin; with `gateways` > 1 also `warmroute-<N>gw`:
    warmroute as N replicas sharing Redis and the store, the client spreading requests over
    them round-robin."""

    def gateway(policy: str, replicas: int = 1) -> Launcher:
        def launch(fleet: SimFleet, log: Path) -> AbstractContextManager[Launched]:
            return launch_gateway(fleet, policy, log, epsilon, replicas)
        return launch

    targets = {
        "warmroute": TargetSpec("warmroute", DEFAULT_KEY_HEADER, gateway("cache-aware")),
        "warmroute-keyless": TargetSpec("warmroute-keyless", None, gateway("cache-aware")),
        "warmroute-hash": TargetSpec("warmroute-hash", DEFAULT_KEY_HEADER, gateway("hash")),
        "round-robin": TargetSpec("round-robin", DEFAULT_KEY_HEADER, gateway("round-robin")),
    }
    if gateways > 1:
        name = f"warmroute-{gateways}gw"
        targets[name] = TargetSpec(name, DEFAULT_KEY_HEADER, gateway("cache-aware", gateways))
    return targets


def workload_span_s(workload: Workload) -> float:
    """When the workload's last conversation or timed turn is due."""
    times = [c.start_s for c in workload.conversations]
    times += [t.at_s for c in workload.conversations for t in c.turns if t.at_s is not None]
    return max(times, default=0.0)


def fault_time(workload: Workload, params: BenchParams) -> float:
    return params.fault_at_s if params.fault_at_s is not None else workload_span_s(workload) / 2


def run_fleet_bench(
    workload: Workload,
    specs: list[TargetSpec],
    params: BenchParams,
    out_dir: Path,
    console: Console,
) -> list[BenchRun]:
    """Every (scenario, target) pair in turn; every process it starts is stopped."""
    for scenario in params.scenarios:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; expected one of {SCENARIOS}")
    fleet = SimFleet(params.engines, out_dir / "logs")
    runs: list[BenchRun] = []
    try:
        for scenario in params.scenarios:
            for spec in specs:
                console.print(f"[bold]{scenario}[/]: {spec.name} over {params.engines.count} "
                              f"simulated engines, {workload.num_requests} requests …")
                runs.append(one_run(workload, spec, scenario, params, fleet, out_dir))
    finally:
        fleet.stop()
    return runs


def one_run(
    workload: Workload,
    spec: TargetSpec,
    scenario: str,
    params: BenchParams,
    fleet: SimFleet,
    out_dir: Path,
) -> BenchRun:
    run_name = f"{scenario}-{spec.name}"
    killed: list[str] = []
    faulty = scenario == "fault"
    options = RunOptions(
        concurrency=params.concurrency, timeout_s=params.timeout_s,
        fault_at_s=fault_time(workload, params) if faulty else None, progress=params.progress,
    )
    fleet.start(run_name)
    try:
        with spec.launch(fleet, out_dir / "logs" / run_name / "router.log") as launched:
            # Name the model: some peers require the field, sglang-router fills in "unknown".
            target = Target(spec.name, launched.url, spec.key_header, model=SIM_MODEL,
                            replicas=launched.urls[1:])
            result = asyncio.run(run_workload(
                workload, target, options,
                fault=lambda: killed.append(fleet.kill(params.fault_engine)),
            ))
    finally:
        fleet.stop()
    return BenchRun(spec.name, scenario, list(fleet.ids), result.records, result.duration_s,
                    result.fault_at_s, killed[0] if killed else None)
