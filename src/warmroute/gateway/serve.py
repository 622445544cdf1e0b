"""`warmroute serve`: the embedded default, a gateway in this process over N local engines.

Engines are child processes (`python -m warmroute.cli engine`) on free 127.0.0.1 ports, each
given `cores // N` torch threads (oversubscribed engines lose 2.4–6×), logging under the data
directory. Once every engine is healthy the gateway listens and a ready-to-paste `curl` is
printed. Ctrl-C or SIGTERM stops the gateway and then every child; on Linux the children also
get SIGTERM if this process dies without cleaning up (PR_SET_PDEATHSIG), so none is orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

import httpx
import uvicorn

from warmroute.config import (
    EngineConfig,
    EngineEndpoint,
    GatewayConfig,
    ServeConfig,
    child_process_env,
)
from warmroute.gateway.launch import quiet_http_client_logs

STOP_GRACE_S = 10.0
PR_SET_PDEATHSIG = 1


@dataclass
class LocalEngine:
    engine_id: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when the parent exits (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_engine(config: ServeConfig, index: int) -> LocalEngine:
    engine_id, port = f"engine-{index + 1}", free_port()
    log = config.data_dir / f"{engine_id}.log"
    threads = config.threads_per_engine
    command = [
        sys.executable, "-m", "warmroute.cli", "engine", "--host", "127.0.0.1",
        "--port", str(port), "--engine-id", engine_id, "--model", config.model,
        "--threads", str(threads), "--dtype", config.dtype,
    ]
    with log.open("ab") as handle:
        popen = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=child_process_env(threads),
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    return LocalEngine(engine_id, port, popen, log)


def wait_healthy(engines: list[LocalEngine], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(engines)
    while pending:
        engine = pending[0]
        if engine.popen.poll() is not None:
            raise RuntimeError(f"{engine.engine_id} exited early; see {engine.log}:\n"
                               + tail(engine.log))
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(engine.url + "/health", timeout=1.0).status_code == 200:
                pending.pop(0)
                continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"{engine.engine_id} not healthy after {timeout:.0f}s; see "
                               f"{engine.log}")
        time.sleep(0.2)


def stop_engines(engines: list[LocalEngine]) -> None:
    for engine in engines:
        if engine.popen.poll() is None:
            engine.popen.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for engine in engines:
        with contextlib.suppress(subprocess.TimeoutExpired):
            engine.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        if engine.popen.poll() is None:
            engine.popen.kill()
            engine.popen.wait()


def tail(path: Path, chars: int = 2000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:]
    return ""


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
        for index in range(config.engines):
            engines.append(start_engine(config, index))
        wait_healthy(engines, config.startup_timeout_s)
        dev_key = asyncio.run(ensure_dev_key(config))
        gateway = GatewayConfig(
            engines=tuple(EngineEndpoint.of(e.url, e.engine_id) for e in engines),
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
    from warmroute.api.gateway_app import create_gateway_app

    server = uvicorn.Server(uvicorn.Config(create_gateway_app(config), host=config.host,
                                           port=config.port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        on_ready()
    await task


async def ensure_dev_key(config: ServeConfig) -> str:
    """The development API key: created on first start, kept in <data-dir>/dev-key (0600)."""
    from warmroute.api.auth import create_key
    from warmroute.store import open_store

    path = config.data_dir / "dev-key"
    if path.exists():
        return path.read_text().strip()
    store = await open_store(config.database_url or str(config.data_dir / "warmroute.db"))
    try:
        secret, _ = await create_key(store, name="development", team="dev")
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
        f"The development API key is kept in {config.data_dir / 'dev-key'}.",
        "Ctrl-C stops the gateway and its engines.",
    ]
    return "\n".join(lines)

