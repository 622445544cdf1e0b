"""Simulated engines and the routers in front of them, as child processes on 127.0.0.1.

`SimFleet` starts N `warmroute engine --model sim` processes on ports chosen once, so every
target sees the same engine ids and URLs, and restarts them fresh (cold caches) for every run.
`launch_gateway` starts a `warmroute gateway` over them (`--policy cache-aware` for warmroute,
`--policy round-robin` for the floor), or several replicas sharing a Redis and a store, and
waits until each sees every engine healthy. Every
child gets SIGTERM if this process dies (PR_SET_PDEATHSIG), and `stop` ends them all.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from warmroute.config import SchedulingPolicy, child_process_env
from warmroute.procs import (
    LocalEngine,
    RedisServer,
    die_with_parent,
    free_port,
    stop_engines,
    tail,
    wait_healthy,
)

STARTUP_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class EngineParams:
    count: int = 3
    profile: str = "cpu"
    prefill_ms_per_token: float | None = None
    decode_ms_per_token: float | None = None
    max_running: int = 16
    cache_blocks: int | None = None
    block_size: int = 16
    # As a vLLM fleet run for a router that ranks requests (`--engine-priority`); a request
    # without a `priority` ranks 0, so routers that send none get arrival order.
    scheduling_policy: SchedulingPolicy = "priority"

    def flags(self) -> list[str]:
        out = ["--sim-profile", self.profile, "--max-running", str(self.max_running),
               "--block-size", str(self.block_size),
               "--scheduling-policy", self.scheduling_policy]
        if self.prefill_ms_per_token is not None:
            out += ["--prefill-ms-per-token", str(self.prefill_ms_per_token)]
        if self.decode_ms_per_token is not None:
            out += ["--decode-ms-per-token", str(self.decode_ms_per_token)]
        if self.cache_blocks is not None:
            out += ["--cache-blocks", str(self.cache_blocks)]
        return out


def spawn(command: Sequence[str], log: Path, env: Mapping[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    """A child that logs to `log` and is told to stop (SIGTERM) if this process dies."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        return subprocess.Popen(
            list(command), stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else child_process_env(1),
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )


def stop_process(popen: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


class SimFleet:
    """N simulated engines, `engine-1` … `engine-N`, on ports fixed for the fleet's life."""

    def __init__(self, params: EngineParams, log_dir: Path) -> None:
        if params.count < 1:
            raise ValueError("a fleet needs at least one engine")
        self.params = params
        self.log_dir = log_dir
        self.ports = [free_port() for _ in range(params.count)]
        self.ids = [f"engine-{i + 1}" for i in range(params.count)]
        self.engines: list[LocalEngine] = []

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start(self, run_name: str) -> None:
        """Start every engine fresh (logs under `log_dir/run_name`) and wait until healthy."""
        self.stop()
        logs = self.log_dir / run_name
        for engine_id, port in zip(self.ids, self.ports, strict=True):
            log = logs / f"{engine_id}.log"
            command = [sys.executable, "-m", "warmroute", "engine", "--model", "sim",
                       "--host", "127.0.0.1", "--port", str(port), "--engine-id", engine_id,
                       *self.params.flags()]
            self.engines.append(LocalEngine(engine_id, port, spawn(command, log), log))
        wait_healthy(self.engines, STARTUP_TIMEOUT_S)

    def kill(self, index: int) -> str:
        """SIGKILL one engine (the fault); returns its id."""
        engine = self.engines[index]
        if engine.popen.poll() is None:
            engine.popen.send_signal(signal.SIGKILL)
        return engine.engine_id

    def stop(self) -> None:
        stop_engines(self.engines)
        self.engines = []


@dataclass
class Launched:
    """A router process and the base URL clients send to; with gateway replicas, the other
    replicas' URLs and processes too (a client spreads requests over `urls`)."""

    url: str
    popen: subprocess.Popen[bytes]
    log: Path
    replicas: list[Launched] = field(default_factory=list)

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *(r.url for r in self.replicas))


def http_ok(response: httpx.Response) -> bool:
    return response.status_code == 200


def wait_ready(
    launched: Launched,
    path: str,
    timeout_s: float,
    ready: Callable[[httpx.Response], bool] = http_ok,
) -> None:
    """Poll `url + path` until `ready(response)` is true; raise if the process dies first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if launched.popen.poll() is not None:
            raise RuntimeError(f"{launched.log.name} exited early:\n{tail(launched.log)}")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = httpx.get(launched.url + path, timeout=2.0, trust_env=False)
            if ready(response):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{launched.url} not ready after {timeout_s:.0f}s; see "
                               f"{launched.log}:\n{tail(launched.log)}")
        time.sleep(0.2)


@contextlib.contextmanager
def launch_gateway(
    fleet: SimFleet, policy: str, log: Path, epsilon: float = 0.25, gateways: int = 1
) -> Iterator[Launched]:
    """`warmroute gateway` over the fleet, ready once it counts every engine healthy. With
    `gateways` > 1, that many replicas sharing a Redis of their own (routing state) and one
    SQLite store (the deployment's secret), each with its own data dir, as a deployment behind
    a load balancer runs them."""
    shared: list[str] = []
    redis = None
    if gateways > 1:
        redis = RedisServer(log.parent / "redis").start()
        shared = ["--redis-url", redis.url,
                  "--database-url", f"sqlite:///{log.parent / 'shared-store.db'}"]
    launched: list[Launched] = []
    try:
        for index in range(gateways):
            name = log if index == 0 else log.with_name(f"{log.stem}-{index + 1}{log.suffix}")
            launched.append(start_gateway(fleet, policy, name, epsilon, shared))
        first = launched[0]
        first.replicas = launched[1:]
        yield first
    finally:
        for one in launched:
            stop_process(one.popen)
        if redis is not None:
            redis.kill()


def start_gateway(fleet: SimFleet, policy: str, log: Path, epsilon: float,
                  extra: Sequence[str] = ()) -> Launched:
    port = free_port()
    command = [sys.executable, "-m", "warmroute", "gateway", "--port", str(port),
               "--policy", policy, "--epsilon", str(epsilon), "--probe-interval", "0.5",
               "--data-dir", str(log.parent / f"{log.stem}-data"), "--no-api-keys", *extra]
    if fleet.params.scheduling_policy == "priority":
        command.append("--engine-priority")
    for engine_id, url in zip(fleet.ids, fleet.urls, strict=True):
        command += ["--engine", f"{engine_id}={url}"]
    launched = Launched(f"http://127.0.0.1:{port}", spawn(command, log), log)
    wanted = len(fleet.ids)
    try:
        wait_ready(launched, "/health", STARTUP_TIMEOUT_S,
                   lambda r: http_ok(r) and r.json().get("healthy_engines") == wanted)
    except BaseException:
        stop_process(launched.popen)
        raise
    return launched
