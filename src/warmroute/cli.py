"""The `warmroute` command: `engine`, `gateway`, `serve`, `keys`, `usage`, `bench`, `simulate`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from warmroute.bench.commands import register_bench_commands
from warmroute.config import EngineConfig, warmroute_home
from warmroute.engine.sim_profile import add_sim_arguments, sim_profile_from_args
from warmroute.gateway.admin import register_admin_commands
from warmroute.gateway.launch import (
    add_gateway_arguments,
    add_gateway_bench_arguments,
    add_serve_arguments,
)
from warmroute.sim.commands import register_simulate_command


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="builtin:tiny", help="builtin:tiny, builtin:small, a folder, or ORG/NAME"
    )
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--block-size", type=int, default=16)
    capacity = parser.add_mutually_exclusive_group()
    capacity.add_argument("--cache-blocks", type=int, help="prefix cache capacity in blocks")
    capacity.add_argument("--cache-gb", type=float, help="prefix cache capacity in GiB (default 1)")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto")
    parser.add_argument("--max-running", type=int, default=16, help="requests decoded together")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="context length to serve (default: the model's)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=args.model,
        host=getattr(args, "host", "127.0.0.1"),
        port=getattr(args, "port", 8100),
        block_size=args.block_size,
        cache_blocks=args.cache_blocks,
        cache_gb=args.cache_gb,
        dtype=args.dtype,
        max_running=args.max_running,
        max_model_len=args.max_model_len,
        engine_id=getattr(args, "engine_id", None) or "",
        served_model_name=args.served_model_name,
        threads=args.threads,
        home=warmroute_home(),
    )


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_engine(args: argparse.Namespace) -> int:
    import uvicorn

    from warmroute.api.engine_app import create_engine_app
    from warmroute.engine.llm import Engine

    config = engine_config(args)
    if args.block_size < 1 or (config.cache_blocks is not None and config.cache_blocks < 1):
        raise SystemExit("--block-size and --cache-blocks must be positive")
    simulated = config.model == "sim"
    if not simulated:
        set_threads(config.threads)
    engine = Engine.from_config(config, sim_profile_from_args(args) if simulated else None)
    app = create_engine_app(engine, config.resolved_engine_id)
    print(
        f"warmroute engine {config.resolved_engine_id}: {engine.model_name} ({engine.dtype}), "
        f"{engine.pool.num_blocks} cache blocks of {engine.block_size} tokens, "
        f"listening on http://{config.host}:{config.port}",
        flush=True,
    )
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from warmroute.bench.engine_bench import run_engine_bench

    set_threads(args.threads)
    return run_engine_bench(engine_config(args), prompt_tokens=args.prompt_tokens,
                            shared_tokens=args.shared_tokens, decode_tokens=args.decode_tokens)


def run_gateway(args: argparse.Namespace) -> int:
    from warmroute.gateway.launch import run_gateway as run

    return run(args)


def run_serve(args: argparse.Namespace) -> int:
    from warmroute.gateway.launch import run_serve_command

    return run_serve_command(args)


def run_bench_gateway(args: argparse.Namespace) -> int:
    from warmroute.bench.gateway_bench import run_gateway_bench_command

    return run_gateway_bench_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warmroute", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    engine = sub.add_parser("engine", help="run one inference server with a prefix cache")
    add_engine_arguments(engine)
    engine.add_argument("--host", default="127.0.0.1")
    engine.add_argument("--port", type=int, default=8100)
    engine.add_argument("--engine-id", default=None, help="name reported in x-warmroute-engine")
    add_sim_arguments(engine)
    engine.set_defaults(func=run_engine)

    gateway = sub.add_parser("gateway", help="route requests over engines (sticky, bounded load)")
    add_gateway_arguments(gateway)
    gateway.set_defaults(func=run_gateway)

    serve = sub.add_parser("serve", help="a gateway plus N local engines (the embedded default)")
    add_serve_arguments(serve)
    serve.set_defaults(func=run_serve)

    register_admin_commands(sub)

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    bench_engine = bench_sub.add_parser("engine", help="cold vs warm TTFT; batched decode")
    add_engine_arguments(bench_engine)
    bench_engine.add_argument("--prompt-tokens", type=int, default=2000)
    bench_engine.add_argument("--shared-tokens", type=int, default=1900)
    bench_engine.add_argument("--decode-tokens", type=int, default=32)
    bench_engine.set_defaults(func=run_bench, model="builtin:small")
    bench_gateway = bench_sub.add_parser(
        "gateway", help="sticky vs round-robin hit rate and TTFT; gateway overhead"
    )
    add_gateway_bench_arguments(bench_gateway)
    bench_gateway.set_defaults(func=run_bench_gateway)
    register_bench_commands(bench_sub)
    register_simulate_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
