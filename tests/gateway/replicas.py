"""Gateway replicas as a real deployment runs them, for the replica tests: several
`warmroute gateway` processes over the same engines, sharing a Redis server of the test's own
(never the shared one at 6379) and one store; a client that spreads requests round-robin over
them, as a load balancer does."""

from __future__ import annotations

import contextlib
import itertools
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.gateway.harness import Fleet, chat_body, metric
from tests.procs import Proc, free_port, start
from warmroute.procs import RedisServer


class OwnRedis(RedisServer):
    """The test's own Redis (never the shared one at 6379)."""


@contextlib.contextmanager
def own_redis(tmp: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp).start()
    try:
        yield server
    finally:
        server.kill()


@dataclass
class Replicas:
    """Gateway processes by index; `ask` sends each request to the next one in turn."""

    fleet: Fleet
    tmp: Path
    args: Sequence[str]
    procs: list[Proc] = field(default_factory=list)
    turn: itertools.count[int] = field(default_factory=itertools.count)

    def add(self, port: int | None = None) -> Proc:
        index = len(self.procs)
        port = port or free_port()
        engines = [arg for e in self.fleet.endpoints()
                   for arg in ("--engine", f"{e.engine_id}={e.url}")]
        proc = start(["gateway", "--port", str(port), *engines,
                      "--data-dir", str(self.tmp / f"replica-{index}-{port}"),
                      "--probe-interval", "0.25", *self.args],
                     self.tmp / f"replica-{index}-{port}.log", port)
        proc.wait_healthy()
        self.procs.append(proc)
        return proc

    def restart(self, index: int) -> None:
        """SIGKILL replica `index` and start it again on its port, with an empty memory."""
        old = self.procs[index]
        old.kill(signal.SIGKILL)
        port = int(old.url.rsplit(":", 1)[1])
        self.procs.pop(index)
        self.procs.insert(index, self.add(port))
        self.procs.pop()

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill(signal.SIGTERM)

    def next_url(self) -> str:
        return self.procs[next(self.turn) % len(self.procs)].url

    def metric(self, index: int, name: str, **labels: str) -> float:
        text = httpx.get(self.procs[index].url + "/metrics", timeout=5).text
        return metric(text, name, **labels)


@contextlib.contextmanager
def replicas(fleet: Fleet, tmp: Path, count: int, args: Sequence[str]) -> Iterator[Replicas]:
    group = Replicas(fleet, tmp, args)
    try:
        for _ in range(count):
            group.add()
        yield group
    finally:
        group.stop()


def ask(client: httpx.Client, url: str, messages: list[dict[str, str]], key: str | None = None,
        **extra: Any) -> tuple[str, dict[str, Any]]:
    """(engine, answer) of one Chat Completions request; fails the test on any error."""
    headers = {"x-grok-conv-id": key} if key else {}
    response = client.post(url + "/v1/chat/completions", json=chat_body(messages, **extra),
                           headers=headers)
    assert response.status_code == 200, (url, response.status_code, response.text)
    return response.headers["x-warmroute-engine"], response.json()
