"""The command-line face of the gateway: flags of `warmroute gateway`, `serve` and `bench gateway`
turned into configs, and starting a gateway under uvicorn, in the foreground or on a background
thread (tests run real gateways in-process that way). Cheap to import: `warmroute --help` and
every engine process load it, so web frameworks are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warmroute.config import (
    ROUTING_POLICIES,
    EngineEndpoint,
    GatewayConfig,
    ServeConfig,
    cpu_count,
    env_str,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

STARTUP_TIMEOUT_S = 30.0


def add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine", action="append", default=[], metavar="[ID=]URL",
        help="an engine's base URL (repeat for each); its id defaults to host:port",
    )
    parser.add_argument("--config", type=Path, help="TOML file: [gateway] and [[engines]]")
    parser.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="listen port (default 8000)")
    parser.add_argument("--grpc-port", type=int, default=None,
                        help="serve xAI's gRPC API on this port too (default: HTTP only)")
    parser.add_argument("--epsilon", type=float, default=None,
                        help="bounded-load slack: cap = ceil((1+eps) x average) (default 0.25)")
    parser.add_argument("--load-slack", type=int, default=None,
                        help="cap = max(ceil((1+eps) x avg), ceil(avg) + slack) (default 10)")
    parser.add_argument("--max-body-bytes", type=int, default=None)
    parser.add_argument("--policy", choices=ROUTING_POLICIES, default=None,
                        help="cache-aware (default: conversations stay, new ones go where their "
                             "prefix is warm), hash (stateless rendezvous + bounded load), or "
                             "the round-robin baseline")
    parser.add_argument("--cache-salt", default=None,
                        help="cache salt sent to engines (until API keys bring per-tenant salts)")
    parser.add_argument("--probe-interval", type=float, default=None, dest="probe_interval_s",
                        help="seconds between health probes (default 1)")
    parser.add_argument("--max-resumes", type=int, default=None,
                        help="times a stream whose engine breaks mid-answer is continued on "
                             "another engine (default 2; 0 turns resuming off)")
    add_store_arguments(parser)
    add_tenancy_arguments(parser)


def add_tenancy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-api-keys", action="store_true",
                        help="serve callers without an API key as one development tenant")
    parser.add_argument("--cache-isolation", choices=["team", "key"], default=None,
                        help="share prefix caches within a team (default) or per key only")
    parser.add_argument("--redis-url", default=None,
                        help="redis://… to share rate limits between gateway replicas")


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="logs and the SQLite store live here (default ./.warmroute)")
    parser.add_argument("--database-url", default=None,
                        help="postgresql://… to share the store between gateway replicas")
    parser.add_argument("--response-ttl-days", type=float, default=None,
                        help="days stored responses are kept (default 30)")


def gateway_config(args: argparse.Namespace) -> GatewayConfig:
    """The TOML file's settings, overridden by the flags given; `--engine`s replace its list."""
    config = GatewayConfig.from_toml(args.config) if args.config else GatewayConfig()
    overrides: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("host", "port", "grpc_port", "epsilon", "load_slack", "max_body_bytes",
                     "policy",
                     "cache_salt", "probe_interval_s", "data_dir", "database_url",
                     "cache_isolation", "redis_url", "max_resumes")
        if getattr(args, name) is not None
    }
    if args.no_api_keys:
        overrides["require_api_keys"] = False
    secret = env_str("CACHE_SECRET")
    if secret:
        overrides["cache_secret"] = secret
    if args.response_ttl_days is not None:
        overrides["response_ttl_s"] = args.response_ttl_days * 24 * 3600
    if args.engine:
        overrides["engines"] = tuple(EngineEndpoint.parse(spec) for spec in args.engine)
    config = dataclasses.replace(config, **overrides)
    if not config.engines:
        raise SystemExit("warmroute gateway: name at least one --engine URL (or a --config)")
    return config


def quiet_http_client_logs() -> None:
    """httpx logs every request at INFO; a gateway makes several per request and per second."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


def run_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from warmroute.api.gateway_app import create_gateway_app

    config = gateway_config(args)
    quiet_http_client_logs()
    engines = ", ".join(f"{e.engine_id}={e.url}" for e in config.engines)
    print(f"warmroute gateway on http://{config.host}:{config.port} -> {engines}", flush=True)
    uvicorn.run(create_gateway_app(config), host=config.host, port=config.port,
                log_level="warning")
    return 0


class BackgroundServer:
    """A uvicorn server for `app` on a thread of this process; `stop()` shuts it down."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        import uvicorn

        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, name="warmroute-server")

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server for {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engines", type=int, default=2, help="local engines to start")
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--port", type=int, default=8000, help="the gateway's HTTP port")
    parser.add_argument("--grpc-port", type=int, default=50051,
                        help="the gateway's gRPC port (xAI's gRPC API; 0 turns it off)")
    parser.add_argument("--data-dir", type=Path, default=Path(".warmroute"),
                        help="where logs and the SQLite store live")
    parser.add_argument("--database-url", default=None,
                        help="postgresql://… instead of the SQLite file in the data dir")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto")


def run_serve_command(args: argparse.Namespace) -> int:
    from warmroute.gateway.serve import run_serve

    if args.engines < 1:
        raise SystemExit("--engines must be at least 1")
    config = ServeConfig(
        engines=args.engines, model=args.model, port=args.port, grpc_port=args.grpc_port,
        data_dir=args.data_dir, dtype=args.dtype, cores=cpu_count(),
        database_url=args.database_url,
    )
    return run_serve(config)


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
