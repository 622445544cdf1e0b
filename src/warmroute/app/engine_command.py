"""`warmroute engine` (one inference server) and `warmroute bench engine`: their flags, the
`EngineConfig` built from them, and the engine served under uvicorn. Torch and the web stack are
imported only when a command runs.
"""

from __future__ import annotations

import argparse

from warmroute.config import (
    DEFAULT_PREFILL_CHUNK,
    ENGINE_API_KEY_ENV,
    SCHEDULING_POLICIES,
    EngineConfig,
    engine_api_key_from_env,
    warmroute_home,
)
from warmroute.engine.sim_profile import PROFILES, SimProfile, sim_profile
from warmroute.procs import run_server, server_config


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("simulated engine (--model sim)")
    group.add_argument("--sim-profile", choices=sorted(PROFILES), default="cpu",
                       help="latency defaults: cpu (bf16 figures measured here) or gpu")
    group.add_argument("--prefill-ms-per-token", type=float, default=None,
                       help="prefill cost per uncached prompt token (overrides the profile)")
    group.add_argument("--decode-ms-per-token", type=float, default=None,
                       help="cost of one batched decode step (overrides the profile)")


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
    parser.add_argument("--max-waiting", type=int, default=256,
                        help="requests queued for admission; more get 503 with retry-after")
    parser.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK,
                        help="prompt tokens prefilled per scheduler step (chunked prefill)")
    parser.add_argument("--scheduling-policy", choices=SCHEDULING_POLICIES, default="fcfs",
                        help="fcfs: prefill in arrival order; priority: by each request's "
                             "`priority` (lower first), then arrival, as vLLM's policy")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="context length to serve (default: the model's)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")


def add_engine_serving_arguments(parser: argparse.ArgumentParser) -> None:
    """What only `warmroute engine` takes: where it listens, its id, who may call it."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--engine-id", default=None, help="name reported in x-warmroute-engine")
    parser.add_argument("--api-key", default=None,
                        help="refuse callers without Authorization: Bearer KEY on every route "
                             f"but /health (default: ${ENGINE_API_KEY_ENV}, if set)")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    if args.prefill_chunk < 1:
        raise SystemExit("--prefill-chunk must be at least 1 token")
    return EngineConfig(
        model=args.model,
        host=getattr(args, "host", "127.0.0.1"),
        port=getattr(args, "port", 8100),
        block_size=args.block_size,
        cache_blocks=args.cache_blocks,
        cache_gb=args.cache_gb,
        dtype=args.dtype,
        max_running=args.max_running,
        max_waiting=args.max_waiting,
        prefill_chunk=args.prefill_chunk,
        scheduling_policy=args.scheduling_policy,
        max_model_len=args.max_model_len,
        engine_id=getattr(args, "engine_id", None) or "",
        served_model_name=args.served_model_name,
        threads=args.threads,
        home=warmroute_home(),
        api_key=getattr(args, "api_key", None) or engine_api_key_from_env(),
    )


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_engine(args: argparse.Namespace) -> int:
    from warmroute.api.engine_app import create_engine_app
    from warmroute.engine.engine import Engine

    config = engine_config(args)
    if args.block_size < 1 or (config.cache_blocks is not None and config.cache_blocks < 1):
        raise SystemExit("--block-size and --cache-blocks must be positive")
    simulated = config.model == "sim"
    if not simulated:
        set_threads(config.threads)
    engine = Engine.from_config(config, sim_profile_from_args(args) if simulated else None)
    app = create_engine_app(engine, config.resolved_engine_id, api_key=config.api_key)
    print(
        f"warmroute engine {config.resolved_engine_id}: {engine.model_name} ({engine.dtype}), "
        f"{engine.pool.num_blocks} cache blocks of {engine.block_size} tokens, "
        f"listening on http://{config.host}:{config.port}"
        + (" (API key required)" if config.api_key else ""),
        flush=True,
    )
    run_server(server_config(app, config.host, config.port))
    return 0


def run_bench_engine(args: argparse.Namespace) -> int:
    from warmroute.bench.engine_bench import run_engine_bench

    set_threads(args.threads)
    return run_engine_bench(engine_config(args), prompt_tokens=args.prompt_tokens,
                            shared_tokens=args.shared_tokens, decode_tokens=args.decode_tokens)


def sim_profile_from_args(args: argparse.Namespace) -> SimProfile:
    return sim_profile(args.sim_profile, args.prefill_ms_per_token, args.decode_ms_per_token)
