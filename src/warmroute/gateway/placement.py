"""Cache-aware sticky placement (`--policy cache-aware`, the default).

Two things decide where a request goes (`reference/routing-anchors.md` §3.4, and what the fleet
bench showed: routers that only follow a conversation id reach pure stickiness, a keyless
cache-aware router reaches the longest-prefix oracle but moves conversations):

1. **A conversation stays where it was placed.** A keyed request whose conversation already has
   a home engine goes there ("sticky") while that engine is healthy and under the in-flight cap
   ⌈(1+ε)·average⌉ (with the additive `slack` floor). A full home spills this one request
   ("spilled") and keeps its home; a home that failed is replaced ("rehomed").
2. **A new conversation goes where its first token comes soonest, its prefix counted.** Among
   the engines under the in-flight cap *and* under a balance cap on recent requests served,
   ⌈(1+ε_b)·average⌉ (`balance_epsilon`, 0.25), each engine's cost is the prefill queued
   ahead of the request there (`queued`: the work of requests whose first token has not come
   back, in prompt chunks, each request counting `request_work` chunks beyond its uncached
   prompt; see below) plus the prefill this request would do there — the chunks its
   cache (as `PrefixIndex` pictures it) does not hold — weighted by `cache_weight` (4): a
   cached prefix is kept unless the queue in front of it is several times the prefill it
   saves (recomputing it costs the fleet again on every later turn; a queue costs this
   request's wait). The cheapest wins ("prefix" where it holds some of the prompt,
   "least-loaded" where none does); ties go to fewer in flight, fewer served, a stable hash.
   Where at least half the prompt is cached, the engines holding it take it while they are
   under the hot-spot cap ⌈(1+ε)·average served⌉, whatever the queues elsewhere (a keyless
   conversation's own history, a document many conversations share); with the defaults the
   two caps are the same. Keyless requests are always placed this way, so a
   keyless conversation follows its own growing prefix, and a shared system prompt spreads
   under the caps. (Measured in `warmroute simulate`'s model on the Mooncake traces, against
   ranking by cached depth first under a 1.05 balance cap: the whole conversation trace at 4
   engines TTFT p50 −9 %, p90 −28 %, hit 0.270 → 0.271; at 16 engines unchanged; the synthetic
   trace at 8 engines p50 −30 %, hit 0.370 → 0.384; its first 120 s at 8 engines and 3× speed
   p50 −8 %, p90 −18 %, hit 0.108 → 0.102.) The balance cap is loose on purpose: it is work
   that the cost balances, and prompts differ in size by 100×, so a tight cap on request
   counts sent requests past idle engines to busy ones whenever the engines were busy
   (`warmroute bench fleet` on the conversation trace's first 240 s at 6× speed, 8 engines:
   TTFT p50 605 / 550 → 453 / 450 ms, p90 1898 / 1778 → 1431 / 1330 ms, hit rate 0.184 in
   each, going from 1.1 to 1.25; unchanged at 3× speed; the simulator's whole hour unchanged,
   requests served per engine within 1.07 of the average where they were within 1.03).

What one request ahead costs (`request_work`, 4 chunks): an engine's scheduler admits a
waiting prefill per step and runs a decode step for its running batch between them (vLLM,
SGLang and ours alike), so each request queued ahead delays a newcomer by a step beyond its own
prompt. A decode step takes about as long as prefilling ~250 tokens (an 8B model on a GPU:
25 ms against 0.1 ms per token; the fleet bench's simulated engines: 8 ms against 0.03 ms),
~4 of the 256-byte chunks the gateway hashes (~50–64 tokens each). Counting each request as
one chunk, a newcomer was sent behind several small prompts rather than one large one. Measured
with `warmroute bench fleet` on the conversation trace (8 engines, 3× speed, three runs each):
TTFT p50 330 / 334 / 335 → 325 / 324 / 324 ms, p30 177–190 → 164–178 ms, p90 1099–1133 →
1096–1103 ms, hit rate 0.109 in every run. (`warmroute simulate` keeps 1: its chunks are 512-token
trace blocks, and its engines prefill back to back.)

State is small: a bounded table of (tenant, conversation) → home (`homes.HomeTable`: a
tenant's conversation ids are its own), the prefix index (over tenant-salted digests), and
per-engine served counts halved every `decay_every` requests so the balance follows recent
traffic. Gateway replicas share it (`shared_state.py`): other replicas' homes arrive through
`adopt_home`, their placements through `observe`. The
clock never enters; `place` is synchronous and cheap (in a large fleet a new conversation's
choice looks at a window of a few dozen engines chosen by its hash, not all of them), so a
simulator drives this very object. Each decision carries its `work`, the prefill it queues.
"""

from __future__ import annotations

import heapq
import itertools
import math
import zlib
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from itertools import repeat
from typing import Literal

from warmroute.errors import EngineUnavailable
from warmroute.gateway.homes import DEFAULT_MAX_CONVERSATIONS, DEFAULT_MAX_PER_TENANT, HomeTable
from warmroute.gateway.policies import FLOAT_SLACK, Decision, Reason, RequestFeatures, load_cap
from warmroute.gateway.prefix_index import PrefixIndex

MAX_ALTERNATIVES = 7
MAX_CANDIDATES = 8  # of a new placement, for replicas to reserve among
SAMPLE = 32  # failover candidates looked at in a large fleet


@dataclass(frozen=True)
class Plan:
    """A placement before it is recorded: `sticky` (the home), `spilled` (the home is full:
    one of `candidates` takes this request) or `new` (one of `candidates` becomes the home;
    `reason` "rehomed" when the home failed). Each candidate's `works` is the prefill it would
    do, and its `biases` what its cost adds to the prefill queued there (`cache_weight` times
    the uncached chunks): replicas choose among them by the queue they share."""

    kind: Literal["sticky", "spilled", "new"]
    home: str | None
    candidates: tuple[str, ...]
    reason: Reason
    works: tuple[float, ...] = ()
    biases: tuple[float, ...] = ()


@dataclass(frozen=True)
class PlacementParams:
    epsilon: float = 0.25
    slack: int = 10
    balance_epsilon: float = 0.25
    cache_weight: float = 4.0
    request_work: float = 4.0  # what one request costs those behind it beyond its prompt
    max_conversations: int = DEFAULT_MAX_CONVERSATIONS
    max_per_tenant: int = DEFAULT_MAX_PER_TENANT
    decay_every: int = 0  # 0: 1,000 requests per engine


class CacheAwarePlacer:
    def __init__(self, params: PlacementParams | None = None,
                 index: PrefixIndex | None = None) -> None:
        self.params = params or PlacementParams()
        self.index = index or PrefixIndex()
        self.homes = HomeTable(self.params.max_conversations, self.params.max_per_tenant)
        self.served: dict[str, float] = {}
        self._since_decay = 0
        self._hashes: dict[str, int] = {}
        self._order: list[str] = []  # every engine seen, in a fixed order (for windows)
        self._seen: set[str] = set()

    # -- decisions ----------------------------------------------------------------------------

    def place(self, features: RequestFeatures, loads: Mapping[str, int],
              queued: Mapping[str, float] | None = None) -> Decision:
        """Choose among the healthy engines `loads` (engine → requests in flight; `queued`:
        engine → prefill work placed there whose first token has not come back) and record the
        choice (home, prefix index, served count). The decision's `work` is this request's."""
        return self.commit(features, loads, self.plan(features, loads, queued))

    def plan(self, features: RequestFeatures, loads: Mapping[str, int],
             queued: Mapping[str, float] | None = None) -> Plan:
        """What `place` would choose, recording nothing: the home (sticky), or the engines a
        spilled or new placement would take, best first (several replicas pick among them by
        the prefill work they reserve together, `shared_state.reserve`)."""
        if not loads:
            raise EngineUnavailable("no healthy engine is available")
        queue = queued if queued is not None else {}
        cap = load_cap(sum(loads.values()), len(loads), self.params.epsilon, self.params.slack)
        key = features.key
        home = self.homes.get(features.tenant, key) if key is not None else None
        if home is not None and home in loads:
            if loads[home] < cap:
                return Plan("sticky", home, (home,), "sticky")
            spill, works, biases = self._candidates(features, loads, queue, cap, home)
            return Plan("spilled", home, spill, "spilled", works, biases)
        candidates, works, biases = self._candidates(features, loads, queue, cap)
        return Plan("new", home, candidates, "rehomed" if home else "prefix", works, biases)

    def commit(self, features: RequestFeatures, loads: Mapping[str, int], plan: Plan,
               chosen: str | None = None) -> Decision:
        """Carry out `plan` on `chosen` (default: its first candidate) and record it."""
        engine = chosen if chosen is not None and chosen in loads else plan.candidates[0]
        depth = self.index.matched_depth(engine, features.chunks) if features.chunks else 0
        work = prefill_work(features, depth, self.params.request_work)
        if plan.kind == "sticky":
            decision = Decision(self._ranked(engine, loads), "sticky", work)
        elif plan.kind == "spilled":
            assert plan.home is not None
            decision = Decision(self._ranked(engine, loads, plan.home), "spilled", work)
        else:
            reason: Reason = plan.reason if plan.reason == "rehomed" else (
                "prefix" if depth else "least-loaded")
            decision = Decision(self._ranked(engine, loads), reason, work)
        self._record(features, engine, rehome=plan.kind == "new")
        return decision

    def _candidates(
        self, features: RequestFeatures, loads: Mapping[str, int], queued: Mapping[str, float],
        cap: int, exclude: str | None = None,
    ) -> tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...]]:
        """The engines under the in-flight cap and the balance cap (or, where most of the
        prompt is cached, those holding it, under the hot-spot cap), cheapest first
        (the prefill queued there plus `cache_weight` times what this request would prefill
        there; then fewer in flight, fewer served, a stable hash), with each one's prefill
        work and bias (its cost less its queue)."""
        if max(loads.values()) < cap:  # the common case, at C speed
            open_ = set(loads)
            open_.discard(exclude)
        else:
            open_ = {e for e, n in loads.items() if n < cap and e != exclude}
        chunks = features.chunks
        depth, warm = self.index.match(chunks, open_) if chunks else (0, set[str]())
        salt = zlib.crc32(tie_salt(features).encode())
        served = self.served
        average = (sum(map(served.get, loads, repeat(0.0))) + 1) / len(loads)
        pool: set[str] = set()
        if 2 * depth >= len(chunks) > 0:
            # Where most of the prompt is cached already, it goes there up to the hot-spot
            # bound ⌈(1+ε)·average served⌉, whatever the queues elsewhere (and past a tighter
            # balance bound, where one is set): a keyless conversation's own history, a
            # document shared by many conversations.
            pool = self._under_served_cap(warm, average, self.params.epsilon)
        candidates: Collection[str] = (
            self._sampled(pool, salt, loads) if pool
            else self._balanced(open_, average, salt, loads))
        if not candidates:
            candidates = self._sampled(
                open_ or {e for e in loads if e != exclude} or set(loads), salt, loads)
        total, weight, fixed = len(chunks), self.params.cache_weight, self.params.request_work
        uncached = {e: total - (depth if e in warm else self.index.matched_depth(e, chunks))
                    for e in candidates}

        def rank(engine_id: str) -> tuple[float, int, float, int]:
            return (queued.get(engine_id, 0.0) + weight * uncached[engine_id],
                    loads[engine_id], served.get(engine_id, 0.0),
                    -(self._engine_hash(engine_id) ^ salt))

        best = tuple(heapq.nsmallest(MAX_CANDIDATES, candidates, key=rank))
        return (best, tuple(float(uncached[e] + fixed) for e in best),
                tuple(weight * uncached[e] for e in best))

    def _under_served_cap(self, pool: set[str], average: float, epsilon: float) -> set[str]:
        """Those of `pool` that have served fewer than ⌈(1+ε)·average⌉ recent requests (the
        average over the healthy engines, counting the request being placed)."""
        if not pool:
            return pool
        served = self.served
        cap = served_cap(average, epsilon)
        if max(map(served.get, pool, repeat(0.0))) < cap:
            return pool
        return {e for e in pool if served.get(e, 0.0) < cap}

    def _balanced(self, pool: set[str], average: float, salt: int,
                  loads: Mapping[str, int]) -> Collection[str]:
        """`_sampled(_under_served_cap(pool, …))` without making the set of a large pool's
        engines under the balance cap (~25 µs at 512 engines): when more than 2 x `SAMPLE` are
        under it (counted at C speed), the window is filled with them, looked at there alone."""
        epsilon = self.params.balance_epsilon
        if len(pool) > 2 * SAMPLE:
            served, cap = self.served, served_cap(average, epsilon)
            over = sum(map(float(cap).__le__, map(served.get, pool, repeat(0.0))))
            if len(pool) - over > 2 * SAMPLE:
                picked = self._window(lambda e: e in pool and served.get(e, 0.0) < cap,
                                      salt, loads)
                if picked is not None:
                    return picked
        return self._sampled(self._under_served_cap(pool, average, epsilon), salt, loads)

    def _sampled(self, pool: set[str], salt: int, loads: Mapping[str, int]) -> Collection[str]:
        """`pool`, or in a large fleet up to `SAMPLE` of it from the window `salt` says."""
        if len(pool) <= 2 * SAMPLE:
            return pool
        picked = self._window(pool.__contains__, salt, loads)
        return pool if picked is None else picked

    def _window(self, member: Callable[[str], bool], salt: int,
                loads: Mapping[str, int]) -> list[str] | None:
        """Up to `SAMPLE` engines that are `member`s, from a stretch of the fleet's fixed order
        that starts where `salt` says; None if the stretch holds too few of them."""
        if not self._seen.issuperset(loads):
            self._order += [e for e in loads if e not in self._seen]
            self._seen.update(loads)
        stretch = rotated(self._order, salt % len(self._order), 4 * SAMPLE)
        picked = list(itertools.islice(filter(member, stretch), SAMPLE))
        return picked if len(picked) >= SAMPLE // 4 else None

    def _engine_hash(self, engine_id: str) -> int:
        value = self._hashes.get(engine_id)
        if value is None:
            value = self._hashes[engine_id] = zlib.crc32(engine_id.encode())
        return value

    def _ranked(self, chosen: str, loads: Mapping[str, int], *first: str) -> tuple[str, ...]:
        """The choice, then where to fail over: `first`, then the least loaded of (at most
        `SAMPLE` of) the others."""
        head = (chosen, *(e for e in first if e != chosen and e in loads))
        others: Iterable[str] = loads
        if len(loads) > SAMPLE:
            others = rotated(loads, self._engine_hash(chosen) % len(loads), SAMPLE)
        rest = heapq.nsmallest(
            MAX_ALTERNATIVES, (e for e in others if e not in head), key=lambda e: (loads[e], e)
        )
        return (*head, *rest)

    # -- state --------------------------------------------------------------------------------

    def _record(self, features: RequestFeatures, engine_id: str, rehome: bool) -> None:
        key = features.key
        if key is not None:
            if rehome or self.homes.get(features.tenant, key) is None:
                self.homes.set(features.tenant, key, engine_id)
            else:
                self.homes.touch(features.tenant, key)
        self.observe(engine_id, features.chunks)

    def observe(self, engine_id: str, chunks: tuple[Hashable, ...]) -> None:
        """A request with these chunk digests went to `engine_id` (placed here or, with several
        replicas, by another one): the engine now holds them and served one more."""
        self.index.insert(engine_id, chunks)
        self.served[engine_id] = self.served.get(engine_id, 0.0) + 1.0
        self._since_decay += 1
        period = self.params.decay_every or 1000 * max(1, len(self.served))
        if self._since_decay >= period:
            self._since_decay = 0
            for engine in self.served:
                self.served[engine] /= 2.0

    def adopt_home(self, tenant: str, key: str, engine_id: str) -> None:
        """The conversation's home is `engine_id` (decided by another replica)."""
        self.homes.set(tenant, key, engine_id)

    def engine_lost(self, engine_id: str) -> None:
        """An engine failed: its cache is gone. Homes move on their next request."""
        self.index.forget(engine_id)

    def home_of(self, key: str, tenant: str | None = "") -> str | None:
        """The home of the tenant's conversation `key`; with `tenant=None`, of the first
        tenant's conversation by that id (for tests and operators)."""
        if tenant is not None:
            return self.homes.get(tenant, key)
        return next((engine for _, engine in self.homes.tenants_of(key)), None)


def prefill_work(features: RequestFeatures, cached_depth: int,
                 request_work: float = PlacementParams.request_work) -> float:
    """What a request puts in front of those placed after it on an engine holding
    `cached_depth` of its leading chunks, in chunks: its uncached prompt, and `request_work`
    for the scheduler step it takes."""
    return float(len(features.chunks) - cached_depth) + request_work


def served_cap(average: float, epsilon: float) -> int:
    """⌈(1+ε)·average⌉: an engine that has served fewer recent requests may take one more."""
    return math.ceil((1.0 + epsilon) * average - FLOAT_SLACK)


def rotated(items: Collection[str], start: int, count: int) -> Iterable[str]:
    """Up to `count` of `items`, beginning at position `start` and wrapping around."""
    return itertools.islice(
        itertools.chain(itertools.islice(items, start, None), items), count
    )


def tie_salt(features: RequestFeatures) -> str:
    if features.key is not None:
        return features.key
    if features.chunks:
        return str(features.chunks[0])
    return features.affinity or ""
