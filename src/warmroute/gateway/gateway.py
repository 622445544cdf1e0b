"""`Gateway`: one gateway's engines, health prober, HTTP clients, metrics and placement.

It wires the parts together and owns their lifetime (`start`/`stop`, bound to the app's
lifespan); the decisions themselves are the pure functions of `policies.py` and the placer, fed
a snapshot of the membership. The upstream and probe clients, the clock and the randomness can
be passed in: tests drive the whole proxy path against scripted engines in-process
(`httpx.MockTransport`), with no socket. Surfaces (`warmroute.api`) are thin layers over this.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from warmroute import jsoncodec
from warmroute.config import GatewayConfig
from warmroute.gateway import policies
from warmroute.gateway.admission import AdmissionGate, AdmissionParams
from warmroute.gateway.engine_http import LeanUpstream
from warmroute.gateway.faults import FaultJudge
from warmroute.gateway.features import CHUNK_BYTES
from warmroute.gateway.health import HealthProber
from warmroute.gateway.membership import Membership
from warmroute.gateway.metrics import GatewayMetrics
from warmroute.gateway.placement import CacheAwarePlacer, PlacementParams
from warmroute.gateway.policies import Decision, RequestFeatures
from warmroute.gateway.prefix_index import PrefixIndex
from warmroute.gateway.proxy import Proxy
from warmroute.gateway.shared_state import SharedRoutingState, SharedStateParams
from warmroute.gateway.timeline import Timeline
from warmroute.gateway.upstream import UpstreamClient, as_upstream


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        client: httpx.AsyncClient | UpstreamClient | None = None,
        probe_client: httpx.AsyncClient | None = None,
    ) -> None:
        """`client` carries requests to engines and `probe_client` their health probes; both
        default to pooled clients opened in `start` and closed in `stop` (clients passed in
        belong to the caller)."""
        self.config = config
        self.rng = rng or random.Random()
        self.clock = clock
        self.membership = Membership(config.keyed_engines, config.probe_failures_to_eject, clock)
        self.metrics = GatewayMetrics(self.membership)
        self.timeline = Timeline(self.metrics.registry)  # the operators' recent history
        self.turns = itertools.count()
        self.placer = CacheAwarePlacer(
            PlacementParams(config.epsilon, config.load_slack,
                            max_conversations=config.max_conversations,
                            max_per_tenant=config.max_conversations_per_tenant),
            PrefixIndex(sizes=self._cache_chunks),
        )
        self.shared: SharedRoutingState | None = None
        if config.redis_url and config.share_routing and self.indexes_prompts:
            self.shared = SharedRoutingState(
                SharedStateParams(config.redis_url, config.routing_prefix, config.home_ttl_s,
                                  config.routing_log_entries),
                self.placer, self.membership, self.metrics.shared_state_up.set,
            )
        self.membership.listeners.append(self._membership_changed)
        self._client = as_upstream(client) if client is not None else None
        self._probe_client = probe_client
        self._owned: list[httpx.AsyncClient | UpstreamClient] = []
        self._prober: HealthProber | None = None
        self._proxy: Proxy | None = None

    @property
    def proxy(self) -> Proxy:
        if self._proxy is None:
            raise RuntimeError("the gateway has not been started")
        return self._proxy

    async def start(self) -> None:
        """Open the connection pools, probe every engine once, then keep probing."""
        cfg = self.config
        if self._client is None:
            self._client = LeanUpstream(cfg.connect_timeout_s, cfg.upstream_timeout_s,
                                        cfg.pool_timeout_s)
            self._owned.append(self._client)
        probes: UpstreamClient | httpx.AsyncClient
        if self._probe_client is None:  # probes by the lean client; httpx for engine_json
            probes = LeanUpstream(cfg.probe_timeout_s, cfg.probe_timeout_s, cfg.probe_timeout_s)
            self._probe_client = httpx.AsyncClient(timeout=cfg.probe_timeout_s)
            self._owned += [self._probe_client, probes]
        else:
            probes = self._probe_client
        self._prober = HealthProber(self.membership, probes, cfg.probe_interval_s)
        judge = FaultJudge(self.membership, self._prober.check, cfg.request_failures_to_eject)
        admission = AdmissionParams(cfg.admission_work, cfg.admission_ms_per_chunk,
                                    cfg.admission_max_hold_s)
        gate = AdmissionGate(
            self.membership, admission, self.metrics.admission_wait.observe,
        ) if cfg.admission_work > 0 and not cfg.engine_priority else None
        self._proxy = Proxy(self._client, self.membership, self.metrics, judge,
                            cfg.max_in_flight, gate,
                            admission if cfg.engine_priority else None)
        await self._prober.probe_all()
        self._prober.start()
        self.timeline.start()
        if self.shared is not None:
            await self.shared.start()

    async def stop(self) -> None:
        await self.timeline.stop()
        if self.shared is not None:
            await self.shared.stop()
        if self._prober is not None:
            await self._prober.stop()
        for client in self._owned:
            await client.aclose()
        self._owned.clear()

    @property
    def indexes_prompts(self) -> bool:
        """Whether placement reads the prompt's chunk digests (only the cache-aware policy)."""
        return self.config.policy == "cache-aware"

    async def route(self, features: RequestFeatures) -> Decision:
        """Where the request goes. Only the cache-aware policy awaits anything, and only with
        shared routing state: for a conversation new to this replica (one lookup) and for a new
        or moved home (one claim)."""
        if self.indexes_prompts:
            if self.shared is None:
                return self.placer.place(features, self.membership.loads(),
                                         self.membership.queued())
            return await self._route_shared(features, self.shared)
        snapshot = self.membership.snapshot()
        if self.config.policy == "round-robin":
            return policies.round_robin(next(self.turns), snapshot)
        return policies.choose(
            features, snapshot, self.config.epsilon, self.rng, self.config.load_slack
        )

    async def _route_shared(self, features: RequestFeatures,
                            shared: SharedRoutingState) -> Decision:
        """A known home: no round trip (its prefill reserved in the background). Anything
        placed anew — a new conversation, a rehome, a spill, a keyless request — reserves its
        prefill among the plan's candidates in one atomic Redis step, which also claims a new
        home (another replica's claim wins)."""
        key, tenant, placer = features.key, features.tenant, self.placer
        if key is not None and placer.home_of(key, tenant) is None:
            found = await shared.lookup(tenant, key)
            if found is not None:
                placer.adopt_home(tenant, key, found)
        loads = self.membership.loads()
        plan = placer.plan(features, loads, self.membership.queued())
        chosen = None
        if plan.kind != "sticky":
            claim = plan.kind == "new" and key is not None
            chosen = await shared.reserve(tenant, key, plan.candidates, plan.works, plan.biases,
                                          claim, plan.home if plan.reason == "rehomed" else None)
            loads = self.membership.loads()  # the await let other requests place
        decision = placer.commit(features, loads, plan, chosen)
        shared.placed(decision.engine_id, tenant, key, features.chunks, decision.work,
                      reserved=chosen is not None)
        return decision

    def _cache_chunks(self, engine_id: str) -> int | None:
        """How many prompt chunks the engine's cache holds, as its health answer says."""
        state = self.membership.engines.get(engine_id)
        if state is None or state.cache_chars is None:
            return None
        return max(1, state.cache_chars // CHUNK_BYTES)

    def _membership_changed(self, engine_id: str, healthy: bool, cause: str) -> None:
        if not healthy:
            self.placer.engine_lost(engine_id)

    def upstream_payload(self, body: dict[str, Any]) -> bytes:
        """The body engines get. Surfaces put the caller's tenant salt in `cache_salt` (a
        client's own salt never gets this far: `tenant_body` replaces it); without one, the
        configured default applies. A client's `priority` is dropped: how engines order their
        work is the gateway's to say (`engine_priority`)."""
        forwarded = dict(body)
        forwarded.pop("priority", None)
        if not forwarded.get("cache_salt"):
            forwarded.pop("cache_salt", None)
            if self.config.cache_salt:
                forwarded["cache_salt"] = self.config.cache_salt
        return jsoncodec.dumps(forwarded)

    def health(self) -> dict[str, Any]:
        """Whether the gateway can serve, and nothing more: this answer is public (engines,
        their URLs and loads are the operators', `operations.engine_report`)."""
        healthy = len(self.membership.healthy_ids())
        return {"status": "ok" if healthy else "unavailable", "healthy_engines": healthy}

    async def models(self) -> list[str]:
        """The healthy engines' models, de-duplicated in engine order. A model comes from the
        config, else the engine's health answer, else (best effort) its `GET /v1/models`."""
        states = [s for s in self.membership.engines.values() if s.healthy]
        unknown = [s for s in states if not s.model]
        if unknown and self._probe_client is not None:
            found = await asyncio.gather(*(self._listed_models(s.engine_id) for s in unknown))
            for state, listed in zip(unknown, found, strict=True):
                state.model = listed[0] if listed else None
        names: list[str] = []
        for state in states:
            if state.model and state.model not in names:
                names.append(state.model)
        return names

    async def _listed_models(self, engine_id: str) -> list[str]:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            listed = await self.engine_json(engine_id, "/v1/models")
            if listed is not None:
                return [str(card["id"]) for card in listed["data"]]
        return []

    async def engine_json(self, engine_id: str, path: str) -> dict[str, Any] | None:
        """`GET path` on an engine, with its credentials and the probe timeout: the JSON object
        it answers with 200, else None (best effort: for models, cache statistics)."""
        if self._probe_client is None:
            return None
        endpoint = self.membership.engines[engine_id].endpoint
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = await self._probe_client.get(endpoint.url + path,
                                                    headers=endpoint.auth_headers())
            body = response.json() if response.status_code == 200 else None
            return body if isinstance(body, dict) else None
        return None
