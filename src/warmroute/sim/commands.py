"""`warmroute simulate`: flags, the run over each policy, and the printed report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path
from typing import Any

POLICIES = ("warmroute", "warmroute-keyless", "warmroute-hash", "round-robin", "oracle",
            "oracle-in-flight")
DEFAULT_POLICIES = ("warmroute", "warmroute-keyless", "warmroute-hash", "round-robin", "oracle")


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    from warmroute.config import DEFAULT_PREFILL_CHUNK, GatewayConfig
    from warmroute.engine.sim_profile import PROFILES
    from warmroute.sim.traces import default_trace_dir

    parser.add_argument("--engines", type=int, default=1000)
    parser.add_argument("--trace", default="conversation",
                        help="conversation, synthetic (Mooncake files) or a path to a JSONL trace")
    parser.add_argument("--trace-dir", type=Path, default=None,
                        help=f"where the named traces live (default {default_trace_dir()})")
    parser.add_argument("--window", type=float, default=None,
                        help="only the trace's first WINDOW seconds (default: all of it)")
    parser.add_argument("--max-requests", type=int, default=None)
    parser.add_argument("--cache-blocks", type=int, default=1000,
                        help="each engine's prefix cache, in 512-token trace blocks")
    parser.add_argument("--epsilon", type=float, default=0.25)
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="trace time multiplied by this (0.1 = ten times the load)")
    parser.add_argument("--sim-profile", choices=sorted(PROFILES), default="gpu")
    parser.add_argument("--prefill-ms-per-token", type=float, default=None,
                        help="prefill cost per uncached prompt token (overrides the profile)")
    parser.add_argument("--decode-ms-per-token", type=float, default=None,
                        help="cost of one batched decode step (overrides the profile)")
    parser.add_argument("--engine-priority", action="store_true",
                        help="engines schedule by priority, in chunks of --prefill-chunk "
                             "tokens, each request ranked by when its first token is due (the "
                             "gateway's --engine-priority); default: first come, first served")
    parser.add_argument("--priority-ms-per-chunk", type=float,
                        default=GatewayConfig.admission_ms_per_chunk,
                        help="the rank's delay per 256-byte chunk of uncached prompt (the "
                             "gateway's admission_ms_per_chunk)")
    parser.add_argument("--priority-max-s", type=float,
                        default=GatewayConfig.admission_max_hold_s,
                        help="the rank's delay at most (the gateway's admission_max_hold_s)")
    parser.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK,
                        help="prompt tokens per prefill chunk under --engine-priority")
    parser.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                        help=f"comma-separated, from {', '.join(POLICIES)}")
    parser.add_argument("--slack", type=int, default=10,
                        help="in-flight cap max(ceil((1+eps) avg), ceil(avg) + SLACK), as the "
                             "gateway's --load-slack")
    parser.add_argument("--churn-keys", type=int, default=2000,
                        help="conversation keys sampled for the join/leave measurement")
    parser.add_argument("--gateways", type=int, default=1, metavar="N",
                        help="also run warmroute as N replicas behind a round-robin balancer, "
                             "sharing routing state (one run per --replica-lag-ms)")
    parser.add_argument("--replica-lag-ms", default="5", metavar="L[,L…]",
                        help="how late a placement reaches the other replicas (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")


def run_simulate_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from warmroute.engine.sim_profile import sim_profile
    from warmroute.sim.churn import measure_churn
    from warmroute.sim.des import (
        SimParams,
        ceiling_hit_rate,
        engine_ids,
        rank_ms_per_token,
        simulate,
    )
    from warmroute.sim.traces import load_mooncake, resolve_trace

    console = Console(width=max(150, Console().width))
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    if not names or any(n not in POLICIES for n in names):
        raise SystemExit(f"--policies: choose from {', '.join(POLICIES)}")
    if args.engines < 2:
        raise SystemExit("--engines must be at least 2")
    if args.prefill_chunk < 1 or min(args.priority_ms_per_chunk, args.priority_max_s) < 0:
        raise SystemExit("--prefill-chunk must be at least 1, --priority-ms-per-chunk and "
                         "--priority-max-s not negative")
    path = resolve_trace(args.trace, args.trace_dir)
    if not path.is_file():
        raise SystemExit(f"no trace at {path}: name one with --trace PATH or --trace-dir DIR")
    requests = load_mooncake(path, args.window, args.max_requests)
    params = SimParams(engines=args.engines, cache_blocks=args.cache_blocks,
                       epsilon=args.epsilon, time_scale=args.time_scale,
                       profile=sim_profile(args.sim_profile, args.prefill_ms_per_token,
                                           args.decode_ms_per_token), seed=args.seed,
                       engine_priority=args.engine_priority,
                       priority_ms_per_token=rank_ms_per_token(args.priority_ms_per_chunk),
                       priority_max_s=args.priority_max_s,
                       prefill_chunk=args.prefill_chunk)
    ids = engine_ids(params.engines)
    scheduling = (f"engines by priority ({args.priority_ms_per_chunk:g} ms per chunk, at most "
                  f"{args.priority_max_s:g} s; {args.prefill_chunk}-token prefill chunks)"
                  if args.engine_priority
                  else "engines first come, first served")
    console.print(f"{len(requests)} requests from {path.name} over {params.engines} engines, "
                  f"{params.cache_blocks} blocks of 512 tokens each, ε = {params.epsilon}, "
                  f"in-flight slack {args.slack}; {scheduling}")
    results = []
    for router in routers(names, args, params, ids):
        with console.status(f"simulating {router.name} …"):
            results.append(simulate(requests, router, params))
    ceiling = ceiling_hit_rate(requests)
    keys = sorted({r.conv_id for r in requests})
    sample = random.Random(args.seed).sample(keys, min(args.churn_keys, len(keys)))
    with console.status("measuring churn …"):
        churns = [measure_churn(sample, ids, params.epsilon, args.seed, policy)
                  for policy in ("cache-aware", "hash")]

    print_results(console, params, requests, path.name, ceiling, results, churns)
    if args.json is not None:
        write_figures(args.json, path, requests, ceiling, params, results, churns)
        console.print(f"figures: {args.json}")
    return 0


def routers(names: list[str], args: argparse.Namespace, params: Any, ids: list[str]) -> list[Any]:
    """One router per policy asked for; after warmroute, its replicated runs (`--gateways`)."""
    from warmroute.sim.replicas import ReplicatedRouter
    from warmroute.sim.routers import OracleRouter, PolicyRouter

    if args.gateways < 1:
        raise SystemExit("--gateways must be at least 1")
    try:
        lags = [float(v) / 1000.0 for v in args.replica_lag_ms.split(",") if v.strip()]
    except ValueError:
        raise SystemExit("--replica-lag-ms: milliseconds, comma-separated") from None
    out: list[Any] = []
    for name in names:
        if name.startswith("oracle"):
            out.append(OracleRouter(params.epsilon, "in-flight" if name.endswith("flight")
                                    else "served"))
            continue
        out.append(PolicyRouter(name, ids, params.epsilon, random.Random(params.seed),
                                slack=args.slack, cache_blocks=params.cache_blocks))
        if name == "warmroute" and args.gateways > 1:
            out += [ReplicatedRouter(ids, params.epsilon, params.seed, args.gateways, lag,
                                     params.time_scale, args.slack, params.cache_blocks)
                    for lag in lags]
    return out


def print_results(console: Any, params: Any, requests: list[Any], trace: str, ceiling: float,
                  results: list[Any], churns: list[Any]) -> None:
    from rich.table import Table

    table = Table(title=f"warmroute simulate — {params.engines} engines, {len(requests)} "
                        f"requests of {trace}; ceiling (one infinite cache) {ceiling:.3f}")
    for column in ("policy", "hit rate", "max/avg per engine", "sticky", "TTFT p50",
                   "TTFT p99", "µs/decision (mean, p99)", "decisions/s", "µs/snapshot",
                   "sim wall"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for r in results:
        table.add_row(r.policy, f"{r.hit_rate:.3f}", f"{r.max_over_avg:.2f}", f"{r.sticky:.1%}",
                      f"{r.ttft_p50_s * 1000:.0f} ms", f"{r.ttft_p99_s * 1000:.0f} ms",
                      f"{r.decision_us_mean:.0f}, {r.decision_us_p99:.0f}",
                      f"{r.decisions_per_s:,.0f}", f"{r.snapshot_us_mean:.0f}",
                      f"{r.wall_s:.1f} s")
    console.print(table)
    for churn in churns:
        console.print(f"keys moved ({churn.policy}, {churn.keys} keys): engine leaves "
                      f"{churn.moved_on_leave:.4f} (ideal {churn.ideal_leave:.4f}), engine "
                      f"joins {churn.moved_on_join:.4f} (ideal {churn.ideal_join:.4f})")


def write_figures(out: Path, path: Path, requests: list[Any], ceiling: float, params: Any,
                  results: list[Any], churns: list[Any]) -> None:
    document: dict[str, Any] = {
        "trace": str(path), "requests": len(requests), "ceiling": ceiling,
        "params": {**dataclasses.asdict(params)},
        "results": [dataclasses.asdict(r) for r in results],
        "churn": [{**dataclasses.asdict(c), "ideal_leave": c.ideal_leave,
                   "ideal_join": c.ideal_join} for c in churns],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1, default=str))


def register_simulate_command(sub: Any) -> None:
    simulate = sub.add_parser("simulate", help="discrete-event routing simulation at fleet scale")
    add_simulate_arguments(simulate)
    simulate.set_defaults(func=run_simulate_command)
