"""`warmroute gateway`: its flags turned into a `GatewayConfig` (a TOML file, then the flags),
and the gateway run under uvicorn in the foreground. Cheap to import: `warmroute --help` and
every engine process load it, so web frameworks are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from warmroute.config import (
    ENGINE_API_KEY_ENV,
    ROUTING_POLICIES,
    EngineEndpoint,
    GatewayConfig,
    engine_api_key_from_env,
    env_str,
)
from warmroute.procs import (
    favour_the_event_loop,
    quiet_http_client_logs,
    run_server,
    server_config,
)


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
    parser.add_argument("--admission-work", type=float, default=None,
                        help="chunks of prefill (~50-64 tokens each) this gateway keeps sent to "
                             "an engine before a streamed request waits here, least work first "
                             "(default 128; 0: never held)")
    parser.add_argument("--engine-priority", action="store_true",
                        help="send each request's `priority` (when its first token is due, "
                             "least prefill work first), for engines started with "
                             "--scheduling-policy priority (an engine that says or shows it "
                             "is not is sent none)")
    add_store_arguments(parser)
    add_tenancy_arguments(parser)
    add_operator_arguments(parser)


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine-api-key", default=None,
                        help="send Authorization: Bearer KEY to every engine without a key of "
                             f"its own (default: ${ENGINE_API_KEY_ENV}, if set)")
    parser.add_argument("--public-metrics", action="store_true",
                        help="serve /metrics without an admin key (only on a private network "
                             "that Prometheus scrapes; otherwise scrape with a bearer token)")


def add_tenancy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-api-keys", action="store_true",
                        help="serve callers without an API key as one development tenant")
    parser.add_argument("--cache-isolation", choices=["team", "key"], default=None,
                        help="share prefix caches within a team (default) or per key only")
    parser.add_argument("--redis-url", default=None,
                        help="redis://… shared by gateway replicas: rate limits and (with the "
                             "cache-aware policy) routing state, so replicas route as one")
    parser.add_argument("--no-shared-routing", action="store_false", dest="share_routing",
                        default=None, help="with --redis-url, share only rate limits")


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
                     "cache_isolation", "redis_url", "max_resumes", "share_routing",
                     "admission_work")
        if getattr(args, name) is not None
    }
    if args.no_api_keys:
        overrides["require_api_keys"] = False
    if args.public_metrics:
        overrides["public_metrics"] = True
    if args.engine_priority:
        overrides["engine_priority"] = True
    engine_key = args.engine_api_key or engine_api_key_from_env()
    if engine_key:
        overrides["engine_api_key"] = engine_key
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


def run_gateway(args: argparse.Namespace) -> int:
    from warmroute.app.gateway_app import create_gateway_app

    config = gateway_config(args)
    quiet_http_client_logs()
    engines = ", ".join(f"{e.engine_id}={e.shown_url}" for e in config.engines)
    print(f"warmroute gateway on http://{config.host}:{config.port} -> {engines}", flush=True)
    favour_the_event_loop()
    run_server(server_config(create_gateway_app(config), config.host, config.port,
                             config.header_timeout_s, config.send_timeout_s))
    return 0
