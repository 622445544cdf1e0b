"""The real gateway app in-process over scripted engines (`scripted.py`): its lifespan run in
the test's event loop, upstream and probe clients on the scripted transport, a `FakeClock` for
membership, a SQLite store in the test's directory (`ledger` reads its rows back).

httpx's `ASGITransport` buffers whole answers, so `AsgiCall` drives one request through ASGI by
hand: its answer arrives piece by piece, and its client can leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
from collections.abc import AsyncIterator, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import httpx2
import openai
from fastapi import FastAPI

from tests.gateway.scripted import CHAT, ScriptedFleet
from warmroute.app.gateway_app import create_gateway_app
from warmroute.config import GatewayConfig
from warmroute.gateway.auth import Authenticator, create_key
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.health import HealthProber
from warmroute.store import open_store
from warmroute.store.ledger_writer import journaled_rows

SECRET = "scripted-deployment-secret"
NO_STORE: Any = None  # salts need no store


def salt(team: str | None = None) -> str:
    """The cache salt an in-process gateway gives `team`'s requests (team isolation); without
    a team, the anonymous caller's."""
    auth = Authenticator(lambda: NO_STORE, secret=SECRET.encode())
    return auth.anonymous(None).cache_salt if team is None else auth.salt_for(team, "")


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LedgerRow(NamedTuple):
    key_id: str | None
    team: str
    model: str
    engine_id: str | None
    surface: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_in_usd_ticks: int


def ledger(database: Path) -> list[LedgerRow]:
    """Every row of the usage ledger of the SQLite file `database`, in the order written: the
    committed rows, then those still only in a live gateway's journal (committed within
    milliseconds; a journal can hold committed rows until it is emptied)."""
    with contextlib.closing(sqlite3.connect(database)) as conn:
        rows = conn.execute(
            "SELECT id, key_id, team, model, engine_id, surface, prompt_tokens, cached_tokens,"
            " completion_tokens, cost_in_usd_ticks FROM usage_ledger ORDER BY rowid"
        ).fetchall()
    seen = {row[0] for row in rows}
    journaled = [(r[0], *r[3:]) for r in journaled_rows(database) if r[0] not in seen]
    return [LedgerRow(*row[1:]) for row in [*rows, *journaled]]


async def make_keys(data_dir: Path, **specs: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """API keys in the store an in-process gateway over `data_dir` opens: by name, (secret,
    key id). `specs` are `create_key`'s arguments (team, rpm, tpm)."""
    store = await open_store(str(data_dir / "warmroute.db"))
    try:
        made = {}
        for name, spec in specs.items():
            secret, key = await create_key(store, name=name, **spec)
            made[name] = (secret, key.key_id)
        return made
    finally:
        await store.close()


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


@dataclass
class InProcess:
    """A running in-process gateway: the app, its `Gateway`, a client for it, the engines."""

    app: FastAPI
    gateway: Gateway
    fleet: ScriptedFleet
    clock: FakeClock
    http: httpx.AsyncClient
    upstream: httpx.AsyncClient

    async def chat(self, body: dict[str, Any], key: str | None = None,
                   **headers: str) -> httpx.Response:
        if key is not None:
            headers["x-grok-conv-id"] = key
        return await self.http.post(CHAT, json=body, headers=headers)

    def call(self, body: dict[str, Any], key: str | None = None, path: str = CHAT,
             **headers: str) -> AsgiCall:
        if key is not None:
            headers["x-grok-conv-id"] = key
        return AsgiCall(self.app, path, body, headers)

    def openai(self) -> openai.AsyncOpenAI:
        """The real `openai` client, talking to this app through ASGI (openai brings its own
        fork of httpx, `httpx2`, and wants a client of it)."""
        transport = httpx2.ASGITransport(app=self.app)
        return openai.AsyncOpenAI(
            base_url="http://gw/v1", api_key="unused", max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(transport=transport, timeout=30),
        )

    async def metrics(self) -> str:
        """The gateway's Prometheus exposition (what `GET /metrics` serves to operators)."""
        return self.gateway.metrics.exposition().decode()

    async def probe(self) -> None:
        """One round of health probes, as the gateway's prober runs them."""
        await HealthProber(self.gateway.membership, self.upstream, 0.0).probe_all()

    def ledger(self) -> list[LedgerRow]:
        return ledger(Path(self.gateway.config.store_url))

    def in_flight(self) -> dict[str, int]:
        return {s.engine_id: s.in_flight for s in self.gateway.membership.engines.values()}


@contextlib.asynccontextmanager
async def in_process_gateway(
    fleet: ScriptedFleet, data_dir: Path, **settings: Any
) -> AsyncIterator[InProcess]:
    """The gateway's app over `fleet`, started and stopped around the block.

    As `harness.gateway_over`: the `hash` policy without slack unless a test names one (a key
    then lands where `policies.preference` says), no API keys required. Probes run once at
    start and then only when a test calls `probe()`; membership reads the `FakeClock`."""
    settings.setdefault("policy", "hash")
    settings.setdefault("load_slack", 0)
    settings.setdefault("require_api_keys", False)
    settings.setdefault("probe_interval_s", 3600.0)
    settings.setdefault("cache_secret", SECRET)
    config = GatewayConfig(engines=fleet.endpoints(), data_dir=data_dir, **settings)
    clock = FakeClock()
    async with httpx.AsyncClient(transport=fleet.transport()) as upstream:
        gateway = Gateway(config, rng=random.Random(0), clock=clock, client=upstream,
                          probe_client=upstream)
        app = create_gateway_app(config, gateway)
        async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=30
        ) as http:
            yield InProcess(app, gateway, fleet, clock, http, upstream)


class AsgiCall:
    """One POST driven through the app's ASGI interface by hand, so that its answer streams:
    `__aenter__` sends it, `part()` reads the body piece by piece, `leave()` is the client
    going away (Starlette hears `http.disconnect`). Leaving the block waits for the app."""

    def __init__(self, app: FastAPI, path: str, body: dict[str, Any],
                 headers: dict[str, str]) -> None:
        self.app = app
        self.scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "server": ("gw", 80),
            "client": ("127.0.0.1", 40000),
            "headers": [(b"content-type", b"application/json"),
                        *((k.lower().encode(), v.encode()) for k, v in headers.items())],
        }
        self.body = json.dumps(body).encode()
        self.status = 0
        self.headers: dict[str, str] = {}
        self._sent_body = False
        self._left = asyncio.Event()
        self._started = asyncio.Event()
        self._parts: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsgiCall:
        self._task = asyncio.create_task(self.app(self.scope, self._receive, self._send))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.leave()

    async def started(self, timeout: float = 5.0) -> None:
        """Wait for the answer's status and headers."""
        await asyncio.wait_for(self._started.wait(), timeout)

    async def part(self, timeout: float = 5.0) -> bytes | None:
        """The next piece of the body; None once it has ended."""
        return await asyncio.wait_for(self._parts.get(), timeout)

    async def rest(self, timeout: float = 5.0) -> bytes:
        """Everything left of the body, to its end."""
        out = []
        while (piece := await self.part(timeout)) is not None:
            out.append(piece)
        return b"".join(out)

    async def leave(self, timeout: float = 5.0) -> None:
        self._left.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, timeout)

    async def _receive(self) -> dict[str, Any]:
        if not self._sent_body:
            self._sent_body = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self._left.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
            self._started.set()
        elif message["type"] == "http.response.body":
            if message.get("body"):
                self._parts.put_nowait(message["body"])
            if not message.get("more_body", False):
                self._parts.put_nowait(None)


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Let the event loop run until `condition` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.001)
