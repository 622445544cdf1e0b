"""Active health probes: `GET /health` on every engine about once per probe interval.

A 200 answer admits (or keeps) the engine; `probe_failures_to_eject` failures in a row eject it.
All it asks of an engine is `GET /health` with status 200 (vLLM and SGLang answer so too); a
JSON body naming a `model` is remembered for `GET /v1/models`, warmroute engines'
`cache_tokens` and `chars_per_token` size the gateway's picture of their prefix caches, and
their `scheduling_policy` says whether they take a `priority` (`engine_priority`: an engine
that says `fcfs` is sent none; one that says nothing is trusted to, as the operator set, until
it refuses one: `Membership.takes_priority`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from warmroute import jsoncodec
from warmroute.gateway.membership import Membership
from warmroute.gateway.upstream import UpstreamClient, UpstreamError, as_upstream

log = logging.getLogger(__name__)
DEFAULT_CHARS_PER_TOKEN = 4.0


class HealthProber:
    def __init__(self, membership: Membership, client: UpstreamClient | httpx.AsyncClient,
                 interval_s: float):
        """`client`: the gateway's probe client (`engine_http.LeanUpstream`: a probe of every
        engine every interval adds up, and httpx's client costs three times the CPU), or any
        httpx client."""
        self.membership = membership
        self.client = as_upstream(client)
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._checks: dict[str, asyncio.Future[bool]] = {}

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(engine_id) for engine_id in self.membership.engines))

    async def probe(self, engine_id: str) -> None:
        started_at = self.membership.clock()
        try:
            endpoint = self.membership.engines[engine_id].endpoint
            status, raw = await self.client.get_body(endpoint.url + "/health",
                                                     endpoint.auth_headers())
        except UpstreamError as exc:
            self.membership.probe_failed(engine_id, f"probe: {exc.cause}")
            return
        if status != 200:
            self.membership.probe_failed(engine_id, f"probe: HTTP {status}")
            return
        body = json_body(raw)
        self.membership.probe_succeeded(
            engine_id, started_at, model_named(body), cache_chars(body), scheduling_policy(body)
        )

    async def check(self, engine_id: str) -> bool:
        """Whether the engine answers its health probe now (for the proxy, after an answer
        that may mean the engine is sick). Concurrent checks of one engine share one probe;
        it changes no membership state itself."""
        pending = self._checks.get(engine_id)
        if pending is None:
            pending = asyncio.ensure_future(self._answers(engine_id))
            self._checks[engine_id] = pending
            pending.add_done_callback(lambda _: self._checks.pop(engine_id, None))
        return await asyncio.shield(pending)

    async def _answers(self, engine_id: str) -> bool:
        endpoint = self.membership.engines[engine_id].endpoint
        try:
            status, _ = await self.client.get_body(endpoint.url + "/health",
                                                   endpoint.auth_headers())
        except UpstreamError:
            return False
        return status == 200

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="warmroute-health-prober")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            next_round = loop.time() + self.interval_s
            await self.probe_all()
            await asyncio.sleep(max(0.0, next_round - loop.time()))


def json_body(raw: bytes) -> dict[str, object]:
    try:
        body = jsoncodec.loads(raw)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def model_named(body: dict[str, object]) -> str | None:
    """The `model` field of a JSON health answer, if there is one."""
    model = body.get("model")
    return model if isinstance(model, str) and model else None


def scheduling_policy(body: dict[str, object]) -> str | None:
    """How the engine orders its prefills (vLLM's policy names: `fcfs`, `priority`), if it
    says."""
    policy = body.get("scheduling_policy")
    return policy[:64] if isinstance(policy, str) and policy else None


def cache_chars(body: dict[str, object]) -> int | None:
    """About how many characters of prompt the engine's prefix cache holds, if it says."""
    tokens, ratio = body.get("cache_tokens"), body.get("chars_per_token")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens <= 0:
        return None
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio < 64:
        ratio = DEFAULT_CHARS_PER_TOKEN
    return int(tokens * ratio)
