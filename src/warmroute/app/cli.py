"""The `warmroute` command: `engine`, `gateway`, `serve`, `keys`, `usage`, `bench`, `simulate`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from warmroute.app.admin_commands import register_admin_commands
from warmroute.app.engine_command import (
    add_engine_arguments,
    add_engine_serving_arguments,
    add_sim_arguments,
    run_bench_engine,
    run_engine,
)
from warmroute.app.gateway_command import add_gateway_arguments
from warmroute.app.serve import add_serve_arguments
from warmroute.bench.commands import register_bench_commands
from warmroute.sim.commands import register_simulate_command


def run_gateway(args: argparse.Namespace) -> int:
    from warmroute.app.gateway_command import run_gateway as run

    return run(args)


def run_serve(args: argparse.Namespace) -> int:
    from warmroute.app.serve import run_serve_command

    return run_serve_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warmroute", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    engine = sub.add_parser("engine", help="run one inference server with a prefix cache")
    add_engine_arguments(engine)
    add_engine_serving_arguments(engine)
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
    bench_engine.set_defaults(func=run_bench_engine, model="builtin:small")
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
