"""The discrete-event loop: trace arrivals in time order, prefill chunks and completions from
heaps.

Before each arrival every engine runs the prefill chunks that begin by then (engines with work
queued wait in a heap by when their next chunk begins), and every request finished by then
releases its blocks and its slot, so the in-flight counts the policies see are the ones the
gateway would see. With `engine_priority` the engines schedule by priority, each request ranked
by when its first token is due: its arrival plus `priority_ms_per_token` for each prompt token
it must prefill, at most `priority_max_s` (the gateway's `engine_priority`, whose 10 ms per
256-byte chunk is ~0.156 ms per token at 4 characters a token, at most `admission_max_hold_s`;
here the tokens the engine finds uncached, which the gateway estimates from its picture of the
caches). Results per policy: hit
rate (cached / prompt tokens), requests per engine (max over average), the share of
multi-request conversations that stayed on one engine, modelled TTFT, and the policy's cost
(the `choose` call alone; building the gateway-style snapshot is timed apart).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from warmroute.config import DEFAULT_PREFILL_CHUNK, GatewayConfig
from warmroute.engine.sim_profile import GPU, SimProfile
from warmroute.gateway.features import CHUNK_BYTES
from warmroute.sim.routers import Router
from warmroute.sim.simulated_engine import Admission, SimulatedEngine, block_keys
from warmroute.sim.traces import TraceRequest

CHARS_PER_TOKEN = 4.0


def rank_ms_per_token(ms_per_chunk: float) -> float:
    """The gateway's rank rate (`admission_ms_per_chunk` for each 256-byte chunk of prompt) per
    prompt token, at 4 characters a token."""
    return ms_per_chunk / (CHUNK_BYTES / CHARS_PER_TOKEN)


PRIORITY_MS_PER_TOKEN = rank_ms_per_token(GatewayConfig.admission_ms_per_chunk)


@dataclass(frozen=True)
class SimParams:
    engines: int = 1000
    cache_blocks: int = 1000
    block_tokens: int = 512
    epsilon: float = 0.25
    time_scale: float = 1.0
    profile: SimProfile = GPU
    seed: int = 0
    engine_priority: bool = False
    priority_ms_per_token: float = PRIORITY_MS_PER_TOKEN
    priority_max_s: float = GatewayConfig.admission_max_hold_s
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    requests: int
    hit_rate: float
    max_over_avg: float
    sticky: float
    ttft_p50_s: float
    ttft_p99_s: float
    decision_us_mean: float
    decision_us_p99: float
    decisions_per_s: float
    snapshot_us_mean: float
    wall_s: float


def quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def engine_ids(count: int) -> list[str]:
    return [f"engine-{i + 1}" for i in range(count)]


class Fleet:
    """The simulated engines, and when each with prefills queued begins its next chunk."""

    def __init__(self, params: SimParams) -> None:
        chunk = params.prefill_chunk if params.engine_priority else None
        self.engines = [SimulatedEngine(i, params.cache_blocks, params.block_tokens,
                                        params.profile, chunk) for i in range(params.engines)]
        self.params = params
        self._busy: list[tuple[float, int]] = []  # (next chunk begins, engine) for those working

    def admit(self, request: TraceRequest, keys: list[bytes], index: int, ticket: int,
              now: float) -> Admission:
        engine = self.engines[index]
        idle = not engine.prefills
        rank = None
        if self.params.engine_priority:
            uncached = request.input_length - engine.matched_blocks(keys, request.input_length) \
                * engine.block_tokens
            rank = now + min(uncached * self.params.priority_ms_per_token / 1000.0,
                             self.params.priority_max_s)
        admission = engine.admit(keys, request.input_length, request.output_length, now,
                                 ticket, rank)
        if idle:
            heapq.heappush(self._busy, (engine.free_at, index))
        return admission

    def advance(self, until: float) -> list[Admission]:
        """Every chunk that begins by `until`; the admissions whose first token came."""
        out: list[Admission] = []
        while self._busy and self._busy[0][0] <= until:
            _, index = heapq.heappop(self._busy)
            engine = self.engines[index]
            out += engine.advance(until)
            if engine.prefills:
                heapq.heappush(self._busy, (engine.free_at, index))
        return out


def simulate(requests: Sequence[TraceRequest], router: Router, params: SimParams) -> PolicyResult:
    fleet = Fleet(params)
    engines = fleet.engines
    pending: list[tuple[float, int, Admission, bool]] = []  # (when, order, whose, its end?)
    order = itertools.count()
    prompt = cached = 0
    ttfts: list[float] = []
    placements: dict[str, set[int]] = {}
    turns: Counter[str] = Counter()

    def run_until(now: float) -> None:
        for first in fleet.advance(now):
            ttfts.append(first.first_token_at - first.arrived_at)
            heapq.heappush(pending, (first.first_token_at, next(order), first, False))
            heapq.heappush(pending, (first.done_at, next(order), first, True))
        while pending and pending[0][0] <= now:
            _, _, admission, ended = heapq.heappop(pending)
            if ended:
                engines[admission.engine].finish(admission)
            else:
                router.first_token(admission.engine, admission.ticket)

    started = time.perf_counter()
    for ticket, request in enumerate(sorted(requests, key=lambda r: (r.timestamp_ms, r.index))):
        now = request.timestamp_ms / 1000.0 * params.time_scale
        run_until(now)
        keys = block_keys(request.hash_ids)
        index = router.place(request, keys, engines)
        admission = fleet.admit(request, keys, index, ticket, now)
        router.placed(index, keys[: request.input_length // params.block_tokens])
        prompt += request.input_length
        cached += admission.cached_tokens
        placements.setdefault(request.conv_id, set()).add(index)
        turns[request.conv_id] += 1
    run_until(math.inf)
    wall = time.perf_counter() - started
    for simulated in engines:
        simulated.check_integrity()
    served = [e.served for e in engines]
    average = sum(served) / len(served)
    multi = [c for c, n in turns.items() if n >= 2]
    decisions = router.decision_s
    return PolicyResult(
        policy=router.name,
        requests=len(requests),
        hit_rate=cached / prompt if prompt else 0.0,
        max_over_avg=max(served) / average if average else 0.0,
        sticky=sum(1 for c in multi if len(placements[c]) == 1) / len(multi) if multi else 1.0,
        ttft_p50_s=quantile(ttfts, 0.5),
        ttft_p99_s=quantile(ttfts, 0.99),
        decision_us_mean=1e6 * sum(decisions) / len(decisions) if decisions else 0.0,
        decision_us_p99=1e6 * quantile(decisions, 0.99) if decisions else 0.0,
        decisions_per_s=len(decisions) / sum(decisions) if decisions and sum(decisions) else 0.0,
        snapshot_us_mean=1e6 * sum(router.snapshot_s) / len(router.snapshot_s)
        if router.snapshot_s else 0.0,
        wall_s=wall,
    )


def ceiling_hit_rate(requests: Sequence[TraceRequest], block_tokens: int = 512) -> float:
    """One infinite cache shared by everything: the best any routing can do."""
    seen: set[int] = set()
    prompt = cached = 0
    for request in sorted(requests, key=lambda r: (r.timestamp_ms, r.index)):
        limit = max(0, (request.input_length - 1) // block_tokens)
        hits = 0
        for block in request.hash_ids[:limit]:
            if block not in seen:
                break
            hits += 1
        prompt += request.input_length
        cached += hits * block_tokens
        seen.update(request.hash_ids[: request.input_length // block_tokens])
    return cached / prompt if prompt else 0.0
