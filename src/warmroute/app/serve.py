"""`warmroute serve`: the embedded default, a gateway in this process over N local engines.

Engines are child processes (`python -m warmroute engine`) on free 127.0.0.1 ports, each
given `cores // N` torch threads (oversubscribed engines lose 2.4–6×), logging under the data
directory. Engines require a key made for this run (passed in their environment) and the
gateway sends it. Once every engine is healthy the gateway listens and a ready-to-paste `curl`
is printed, with the development key (an admin key: it opens `/dashboard` too). Ctrl-C or
SIGTERM stops the gateway and then every child; on Linux the children also get SIGTERM if this
process dies without cleaning up (`procs.die_with_parent`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO

from warmroute.config import EngineConfig, EngineEndpoint, GatewayConfig, ServeConfig, cpu_count
from warmroute.procs import (
    LocalEngine,
    favour_the_event_loop,
    quiet_http_client_logs,
    server_config,
    settle_startup_objects,
    start_engine,
    stop_engines,
    wait_healthy,
)


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
    if args.engines < 1:
        raise SystemExit("--engines must be at least 1")
    config = ServeConfig(
        engines=args.engines, model=args.model, port=args.port, grpc_port=args.grpc_port,
        data_dir=args.data_dir, dtype=args.dtype, cores=cpu_count(),
        database_url=args.database_url,
    )
    return run_serve(config)


def interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops `serve` the way Ctrl-C does."""
    raise KeyboardInterrupt


def run_serve(config: ServeConfig, out: IO[str] = sys.stdout) -> int:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    quiet_http_client_logs()
    engines: list[LocalEngine] = []
    previous_term = signal.signal(signal.SIGTERM, interrupt)
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        print(f"warmroute serve: starting {config.engines} engine(s) of {config.model} with "
              f"{config.threads_per_engine} thread(s) each; logs in {config.data_dir}/",
              file=out, flush=True)
        engine_key = secrets.token_urlsafe(32)  # only this run's engines and gateway know it
        for index in range(config.engines):
            engines.append(start_engine(config, index, api_key=engine_key))
        wait_healthy(engines, config.startup_timeout_s)
        dev_key = asyncio.run(ensure_dev_key(config))
        gateway = GatewayConfig(
            engines=tuple(EngineEndpoint.of(e.url, e.engine_id) for e in engines),
            engine_api_key=engine_key,
            engine_priority=True,  # its engines schedule by priority (`procs.start_engine`)
            port=config.port,
            grpc_port=config.grpc_port or None,
            data_dir=config.data_dir,
            database_url=config.database_url,
        )
        asyncio.run(serve_gateway(
            gateway, lambda: print(banner(config, engines, dev_key), file=out, flush=True)
        ))
    except RuntimeError as exc:
        print(f"warmroute serve: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        pass  # Ctrl-C or SIGTERM: the way out
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"warmroute serve: stopping {len(engines)} engine(s)", file=out, flush=True)
        stop_engines(engines)
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
    return 0


async def serve_gateway(config: GatewayConfig, on_ready: Callable[[], None]) -> None:
    import uvicorn

    from warmroute.app.gateway_app import create_gateway_app

    server = uvicorn.Server(server_config(create_gateway_app(config), config.host, config.port,
                                          config.header_timeout_s, config.send_timeout_s))
    favour_the_event_loop()
    settle_startup_objects()
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        on_ready()
    await task


async def ensure_dev_key(config: ServeConfig) -> str:
    """The development API key, an admin key: created on first start, kept in
    <data-dir>/dev-key (0600); made anew when the kept one is unknown, revoked or (made by an
    older warmroute) not an admin key."""
    from warmroute.gateway.auth import create_key
    from warmroute.store import hash_key, open_store

    path = config.data_dir / "dev-key"
    kept = path.read_text().strip() if path.exists() else ""
    store = await open_store(config.database_url or str(config.data_dir / "warmroute.db"))
    try:
        known = await store.api_keys.get_by_hash(hash_key(kept)) if kept else None
        if known is not None and known.admin and not known.revoked:
            return kept
        secret, _ = await create_key(store, name="development", team="dev", admin=True)
    finally:
        await store.close()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret


def banner(config: ServeConfig, engines: list[LocalEngine], dev_key: str) -> str:
    url = f"http://127.0.0.1:{config.port}"
    model = EngineConfig(model=config.model).model_name
    lines = [f"warmroute is ready: gateway on {url}"]
    lines += [f"  {e.engine_id}: {e.url} (log {e.log})" for e in engines]
    lines += [
        f"  gRPC (xAI SDK): 127.0.0.1:{config.grpc_port}" if config.grpc_port else "  gRPC: off",
        "Try:",
        f"  curl {url}/v1/chat/completions \\",
        f"    -H 'authorization: Bearer {dev_key}' \\",
        "    -H 'content-type: application/json' -H 'x-grok-conv-id: my-first-conversation' \\",
        f"    -d '{{\"model\": \"{model}\", \"max_tokens\": 16, \"messages\": "
        "[{\"role\": \"user\", \"content\": \"Hello!\"}]}'",
        f"The development API key (an admin key) is kept in {config.data_dir / 'dev-key'}.",
        f"Dashboard: {url}/dashboard (paste the development key)",
        "Ctrl-C stops the gateway and its engines.",
    ]
    return "\n".join(lines)

