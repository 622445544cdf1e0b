"""Real engines and real gateways for the gateway tests, all on 127.0.0.1.

`Fleet` is a set of engine processes (tests/procs.py) that a test may kill and restart on the
same port; `gateway_over` runs a real gateway (uvicorn, real sockets) on a thread of the test
process, so a test can also look at its `Gateway` object.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.procs import Proc, free_port, start_engine
from warmroute.app.gateway_app import create_gateway_app
from warmroute.config import EngineEndpoint, GatewayConfig
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.membership import Membership
from warmroute.procs import BackgroundServer

MODEL = "builtin:tiny"
SYSTEM_PROMPT = (
    "You are the warmroute test assistant. You answer briefly and precisely, you never invent "
    "facts, and you say so when you do not know. Conversations are about caches, routers, "
    "engines, tokens and the latency of requests. Keep every answer under forty words, use "
    "plain English, avoid lists unless asked, and end each answer with a full stop. When the "
    "user asks about prefix caching, explain that blocks of sixteen tokens are hashed in a "
    "chain, so a shared prefix is computed once and reused by every later request."
)


@dataclass
class Fleet:
    """Engine processes by id; `heal` restarts any that a test left dead."""

    tmp: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return list(self.procs)

    def endpoints(self) -> tuple[EngineEndpoint, ...]:
        return tuple(EngineEndpoint.of(p.url, i) for i, p in self.procs.items())

    def url(self, engine_id: str) -> str:
        return self.procs[engine_id].url

    def start(self, ids: list[str]) -> None:
        for engine_id in ids:
            self.procs[engine_id] = start_engine(self.tmp, engine_id)
        for proc in self.procs.values():
            proc.wait_healthy()

    def restart(self, engine_id: str) -> None:
        """Start `engine_id` again on the port it had."""
        old = self.procs[engine_id]
        old.kill()
        port = int(old.url.rsplit(":", 1)[1])
        self.procs[engine_id] = start_engine(self.tmp, engine_id, port=port)
        self.procs[engine_id].wait_healthy()

    def heal(self) -> None:
        for engine_id, proc in list(self.procs.items()):
            if proc.popen.poll() is not None:
                self.restart(engine_id)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()

    def cache_stats(self, engine_id: str) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(self.url(engine_id) + "/cache", timeout=5).json()
        return stats


@contextlib.contextmanager
def gateway_over(
    endpoints: tuple[EngineEndpoint, ...], **settings: Any
) -> Iterator[tuple[str, Gateway]]:
    """A real gateway on a free port; yields its base URL and its `Gateway`.

    Unless a test names its policy, the gateway runs the stateless `hash` policy with the plain
    ⌈(1+ε)·average⌉ cap (no slack): tests of the proxy, failover, resume and tenancy then know
    in advance where a key lands (`policies.preference`). The default `cache-aware` policy has
    its own tests, which pass `policy="cache-aware"`. `/metrics` is open unless a test passes
    `public_metrics=False`."""
    settings.setdefault("policy", "hash")
    settings.setdefault("load_slack", 0)
    settings.setdefault("probe_interval_s", 0.25)
    settings.setdefault("require_api_keys", False)
    settings.setdefault("public_metrics", True)  # tests read /metrics; test_operators does not
    data_dir = Path(tempfile.mkdtemp(prefix="warmroute-gateway-"))
    settings.setdefault("data_dir", data_dir)
    config = GatewayConfig(engines=endpoints, port=free_port(), **settings)
    gateway = Gateway(config)
    server = BackgroundServer(create_gateway_app(config, gateway), config.host, config.port,
                              config.header_timeout_s, config.send_timeout_s)
    server.start()
    try:
        yield server.url, gateway
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def chat_body(messages: list[dict[str, str]], max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
            **extra}


def opening(user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def cached_tokens(answer: dict[str, Any]) -> int:
    return int(answer["usage"]["prompt_tokens_details"]["cached_tokens"])


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        base, _, rest = series.partition("{")
        if base == name and ",".join(sorted(rest.rstrip("}").split(","))) == wanted:
            return float(value)
    return 0.0


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def record_loads(membership: Membership) -> list[dict[str, int]]:
    """Every engine's in-flight count right after each acquire, from now on."""
    seen: list[dict[str, int]] = []
    acquire = membership.acquire

    def recording_acquire(engine_id: str, work: float = 0.0, moved: bool = False) -> None:
        acquire(engine_id, work, moved)
        seen.append({s.engine_id: s.in_flight for s in membership.engines.values()})

    membership.acquire = recording_acquire  # type: ignore[method-assign]
    return seen
