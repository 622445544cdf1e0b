"""Flags and entry points of `warmroute bench gateway`, `bench fleet`, `bench run` and
`bench report`.

- `bench fleet`: N simulated engines; warmroute, round-robin (and with `--peers` the peer
  routers) run the same workload in turn; `--fault` adds the scenario that kills one engine
  mid-run. Writes results.json and PNGs to `--out`, prints the side-by-side table.
- `bench run`: the same workload against any URL (a router you started yourself).
- `bench report`: the table and plots again from a results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warmroute.bench.workload import (
    ChatParams,
    TraceParams,
    Workload,
    synthetic_chats,
    trace_workload,
)
from warmroute.sim.traces import (
    TraceRequest,
    default_trace_dir,
    load_mooncake,
    resolve_trace,
)

if TYPE_CHECKING:
    from rich.console import Console

    from warmroute.bench.fleet import EngineParams


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    work = parser.add_argument_group("workload")
    work.add_argument("--workload", choices=["chats", "trace"], default="chats")
    work.add_argument("--seed", type=int, default=0)
    work.add_argument("--conversations", type=int, default=20)
    work.add_argument("--turns", type=int, default=4, help="turns per conversation (at most)")
    work.add_argument("--min-turns", type=int, default=None)
    work.add_argument("--system-prompts", type=int, default=2,
                      help="distinct system prompts, shared by the conversations")
    work.add_argument("--system-tokens", type=int, default=400)
    work.add_argument("--user-tokens", type=int, default=40, help="mean words per user message")
    work.add_argument("--think-time", type=float, default=0.5, help="mean seconds between turns")
    work.add_argument("--rate", type=float, default=4.0, help="conversations started per second")
    work.add_argument("--max-tokens", type=int, default=8, help="answer length (chats)")
    work.add_argument("--trace", default="conversation",
                      help="conversation, synthetic (Mooncake files) or a path to a JSONL trace")
    work.add_argument("--trace-dir", type=Path, default=None,
                      help=f"where the named traces live (default {default_trace_dir()})")
    work.add_argument("--window", type=float, default=300.0,
                      help="replay the trace's first WINDOW seconds")
    work.add_argument("--max-requests", type=int, default=None)
    work.add_argument("--speedup", type=float, default=1.0, help="trace time divided by this")
    work.add_argument("--max-output-tokens", type=int, default=16,
                      help="cap on a trace request's answer")
    work.add_argument("--concurrency", type=int, default=None,
                      help="closed loop: this many conversations at a time, arrival times ignored")


def build_workload(args: argparse.Namespace) -> Workload:
    return build_workload_and_trace(args)[0]


def build_workload_and_trace(
    args: argparse.Namespace,
) -> tuple[Workload, list[TraceRequest] | None]:
    """The workload and, for `--workload trace`, the (trimmed) trace requests it replays."""
    if args.workload == "chats":
        return synthetic_chats(ChatParams(
            conversations=args.conversations, turns=args.turns, min_turns=args.min_turns,
            system_prompts=args.system_prompts, system_tokens=args.system_tokens,
            user_tokens=args.user_tokens, think_s=args.think_time, rate=args.rate,
            max_tokens=args.max_tokens, seed=args.seed,
        )), None
    path = resolve_trace(args.trace, args.trace_dir)
    if not path.is_file():
        raise SystemExit(f"no trace at {path}: name one with --trace PATH or --trace-dir DIR")
    requests = load_mooncake(path, args.window, args.max_requests)
    params = TraceParams(args.speedup, args.max_output_tokens)
    return trace_workload(path.stem, requests, params), requests


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    from warmroute.engine.sim_profile import PROFILES

    add_workload_arguments(parser)
    fleet = parser.add_argument_group("engines and targets")
    fleet.add_argument("--engines", type=int, default=8, help="simulated engines")
    fleet.add_argument("--sim-profile", choices=sorted(PROFILES), default="cpu")
    fleet.add_argument("--prefill-ms-per-token", type=float, default=None)
    fleet.add_argument("--decode-ms-per-token", type=float, default=None)
    fleet.add_argument("--max-running", type=int, default=16)
    fleet.add_argument("--cache-blocks", type=int, default=None,
                       help="each engine's prefix cache, in 16-token blocks")
    fleet.add_argument("--targets", default="warmroute,round-robin",
                       help="comma-separated: warmroute, warmroute-keyless, warmroute-hash, "
                            "round-robin, warmroute-<N>gw (with --gateways N)")
    fleet.add_argument("--gateways", type=int, default=1, metavar="N",
                       help="also run warmroute as N replicas sharing Redis and the store "
                            "(target warmroute-<N>gw, added after warmroute), the client "
                            "spreading requests over them round-robin")
    fleet.add_argument("--peers", nargs="?", const="all", default=None, metavar="NAMES",
                       help="also sglang-router, SMG and vllm-router (installed under --data-dir);"
                            " NAMES: only these configurations (comma-separated, as the table "
                            "names them)")
    fleet.add_argument("--repeat", type=int, default=1,
                       help="run every (scenario, target) pair this many times (run-to-run noise)")
    fleet.add_argument("--data-dir", type=Path, default=Path(".warmroute"),
                       help="where the peers' virtual environments are kept")
    fleet.add_argument("--epsilon", type=float, default=0.25)
    fleet.add_argument("--fault", action="store_true",
                       help="add the scenario that SIGKILLs one engine mid-run")
    fleet.add_argument("--fault-at", type=float, default=None,
                       help="seconds after the start (default: half the workload's span)")
    fleet.add_argument("--fault-engine", type=int, default=1, help="which engine (1-based)")
    add_output_arguments(parser)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None,
                     help="results.json and PNGs go here (default .warmroute/bench/<time>)")
    out.add_argument("--no-plots", action="store_true")
    out.add_argument("--no-progress", action="store_true")
    out.add_argument("--timeout", type=float, default=300.0, help="per-request timeout (s)")


def wide_console() -> Console:
    """Wide enough for the side-by-side table even when output is not a terminal."""
    from rich.console import Console

    return Console(width=max(150, Console().width))


def out_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    return Path(".warmroute") / "bench" / time.strftime("%Y%m%d-%H%M%S")


def run_fleet_command(args: argparse.Namespace) -> int:
    from warmroute.bench.fleet import EngineParams
    from warmroute.bench.fleet_bench import BenchParams, run_fleet_bench
    from warmroute.procs import quiet_http_client_logs

    quiet_http_client_logs()
    console = wide_console()
    workload, trace = build_workload_and_trace(args)
    specs = chosen_targets(args, console)
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    if args.repeat > 1:
        specs = [replace(spec, name=f"{spec.name} #{k + 1}")
                 for k in range(args.repeat) for spec in specs]
    if not 1 <= args.fault_engine <= args.engines:
        raise SystemExit("--fault-engine must name one of the engines (1-based)")
    params = BenchParams(
        engines=EngineParams(
            count=args.engines, profile=args.sim_profile,
            prefill_ms_per_token=args.prefill_ms_per_token,
            decode_ms_per_token=args.decode_ms_per_token, max_running=args.max_running,
            cache_blocks=args.cache_blocks,
        ),
        scenarios=("normal", "fault") if args.fault else ("normal",),
        fault_at_s=args.fault_at, fault_engine=args.fault_engine - 1, epsilon=args.epsilon,
        concurrency=args.concurrency, timeout_s=args.timeout, progress=not args.no_progress,
    )
    reference = None
    if trace is not None:
        with console.status("reference figures (ceiling, oracle) …"):
            reference = trace_reference(args, trace, params.engines)
    directory = out_dir(args)
    runs = run_fleet_bench(workload, specs, params, directory, console)
    meta = {"command": "bench fleet", "workload": workload.name, **workload.params,
            "requests": workload.num_requests, "engines": vars(params.engines),
            "targets": [s.name for s in specs], "scenarios": list(params.scenarios),
            "epsilon": params.epsilon, "concurrency": params.concurrency}
    if reference is not None:
        meta["reference"] = reference
    return finish(console, directory, meta, runs, args.no_plots)


def chosen_targets(args: argparse.Namespace, console: Console) -> list[Any]:
    """`--targets` (with `warmroute-<N>gw` added after warmroute for `--gateways N`), then the
    `--peers` asked for."""
    from warmroute.bench.fleet_bench import warmroute_targets

    if args.gateways < 1:
        raise SystemExit("--gateways must be at least 1")
    known = warmroute_targets(args.epsilon, args.gateways)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    replicated = f"warmroute-{args.gateways}gw"
    if args.gateways > 1 and replicated not in names:
        names.insert(names.index("warmroute") + 1 if "warmroute" in names else 0, replicated)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown targets {unknown}; choose from {sorted(known)}")
    specs: list[Any] = [known[n] for n in names]
    if args.peers:
        from warmroute.bench.peers import peer_targets

        peers = peer_targets(args.data_dir, console)
        if args.peers != "all":
            wanted = {n.strip() for n in args.peers.split(",") if n.strip()}
            missing = wanted - {p.name for p in peers}
            if missing:
                raise SystemExit(f"unknown peers {sorted(missing)}; choose from "
                                 f"{[p.name for p in peers]}")
            peers = [p for p in peers if p.name in wanted]
        specs += peers
    return specs


def trace_reference(args: argparse.Namespace, trace: list[TraceRequest],
                    engines: EngineParams) -> dict[str, Any]:
    """Ceiling and load-bounded oracle, offline, on the requests exactly as they are replayed."""
    from warmroute.bench.offline import reference_figures, replayed_requests, trace_cache_blocks
    from warmroute.engine.sim_profile import sim_profile

    profile = sim_profile(engines.profile, engines.prefill_ms_per_token,
                          engines.decode_ms_per_token)
    return reference_figures(
        replayed_requests(trace, args.max_output_tokens), engines.count,
        trace_cache_blocks(engines.cache_blocks, engines.block_size, profile),
        args.epsilon, 1.0 / args.speedup, profile,
    )


def finish(console: Console, directory: Path, meta: dict[str, Any], runs: list[Any],
           no_plots: bool) -> int:
    from warmroute.bench.report import plot_all, print_report, write_results

    write_results(directory / "results.json", meta, runs)
    print_report(console, runs, title_of(meta), meta)
    console.print(f"results: {directory / 'results.json'}")
    if not no_plots and runs:
        for path in plot_all(runs, directory):
            console.print(f"plot: {path}")
    return 0


def title_of(meta: dict[str, Any]) -> str:
    engines = meta.get("engines")
    count = f"{engines['count']} simulated engines, " if isinstance(engines, dict) else ""
    return f"warmroute bench — {count}{meta.get('workload')}, {meta.get('requests')} requests"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the target's base URL")
    parser.add_argument("--name", default=None, help="the target's name in the report")
    parser.add_argument("--key-header", default="x-grok-conv-id",
                        help="header that carries the conversation id ('' sends none)")
    parser.add_argument("--model", default=None, help="model field to send, if any")
    add_workload_arguments(parser)
    add_output_arguments(parser)


def run_target_command(args: argparse.Namespace) -> int:
    from warmroute.bench.report import BenchRun
    from warmroute.bench.runner import RunOptions, Target, run_workload

    console = wide_console()
    workload = build_workload(args)
    target = Target(args.name or args.url, args.url.rstrip("/"), args.key_header or None,
                    args.model)
    options = RunOptions(concurrency=args.concurrency, timeout_s=args.timeout,
                         progress=not args.no_progress)
    result = asyncio.run(run_workload(workload, target, options, console=console))
    engines = sorted({r.engine for r in result.records if r.engine})
    run = BenchRun(target.name, "normal", engines, result.records, result.duration_s)
    meta = {"command": "bench run", "workload": workload.name, **workload.params,
            "requests": workload.num_requests, "url": target.url}
    return finish(console, out_dir(args), meta, [run], args.no_plots)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", type=Path, help="a results.json written by bench")
    parser.add_argument("--no-plots", action="store_true")


def run_report_command(args: argparse.Namespace) -> int:
    from warmroute.bench.report import plot_all, print_report, read_results

    console = wide_console()
    meta, runs = read_results(args.results)
    print_report(console, runs, title_of(meta), meta)
    if not args.no_plots and runs:
        for path in plot_all(runs, args.results.parent):
            console.print(f"plot: {path}")
    return 0


def add_gateway_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto")
    parser.add_argument("--conversations", type=int, default=24)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    parser.add_argument("--user-words", type=int, default=20, help="words per user turn")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--epsilon", type=float, default=0.25,
                        help="the sticky gateway's bounded-load slack")
    parser.add_argument("--overhead-requests", type=int, default=200,
                        help="requests per path for the added-latency figure")


def run_gateway_bench(args: argparse.Namespace) -> int:
    from warmroute.bench.gateway_bench import run_gateway_bench_command

    return run_gateway_bench_command(args)


def run_overhead(args: argparse.Namespace) -> int:
    from warmroute.bench.overhead import run_overhead_command

    return run_overhead_command(args)


def register_bench_commands(bench_sub: Any) -> None:
    """`bench gateway`, `bench overhead`, `bench fleet`, `bench run` and `bench report` under
    `warmroute bench`."""
    from warmroute.bench.overhead import add_overhead_arguments

    overhead = bench_sub.add_parser(
        "overhead", help="latency and CPU a router adds over calling the engine, vs the peers"
    )
    add_overhead_arguments(overhead)
    overhead.set_defaults(func=run_overhead)
    gateway = bench_sub.add_parser(
        "gateway", help="sticky vs round-robin hit rate and TTFT; gateway overhead"
    )
    add_gateway_bench_arguments(gateway)
    gateway.set_defaults(func=run_gateway_bench)
    fleet = bench_sub.add_parser(
        "fleet", help="simulated engines behind warmroute, round-robin (and --peers), side by side"
    )
    add_fleet_arguments(fleet)
    fleet.set_defaults(func=run_fleet_command)
    run = bench_sub.add_parser("run", help="drive any router URL with a workload")
    add_run_arguments(run)
    run.set_defaults(func=run_target_command)
    report = bench_sub.add_parser("report", help="table and plots from a results.json")
    add_report_arguments(report)
    report.set_defaults(func=run_report_command)
