"""The discrete-event loop: trace arrivals in time order, completions from a heap.

Before each arrival every request finished by then releases its blocks and its slot, so the
in-flight counts the policies see are the ones the gateway would see. Results per policy: hit
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

from warmroute.engine.sim_profile import GPU, SimProfile
from warmroute.sim.routers import Router
from warmroute.sim.simulated_engine import Admission, SimulatedEngine, block_keys
from warmroute.sim.traces import TraceRequest


@dataclass(frozen=True)
class SimParams:
    engines: int = 1000
    cache_blocks: int = 1000
    block_tokens: int = 512
    epsilon: float = 0.25
    time_scale: float = 1.0
    profile: SimProfile = GPU
    seed: int = 0


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


def simulate(requests: Sequence[TraceRequest], router: Router, params: SimParams) -> PolicyResult:
    engines = [SimulatedEngine(i, params.cache_blocks, params.block_tokens, params.profile)
               for i in range(params.engines)]
    pending: list[tuple[float, int, Admission | None, int]] = []  # ends, and first tokens
    order = itertools.count()
    prompt = cached = 0
    ttfts: list[float] = []
    placements: dict[str, set[int]] = {}
    turns: Counter[str] = Counter()
    started = time.perf_counter()
    for request in sorted(requests, key=lambda r: (r.timestamp_ms, r.index)):
        now = request.timestamp_ms / 1000.0 * params.time_scale
        while pending and pending[0][0] <= now:
            _, _, done, where = heapq.heappop(pending)
            if done is None:
                router.first_token(where)
            else:
                engines[done.engine].finish(done)
        keys = block_keys(request.hash_ids)
        index = router.place(request, keys, engines)
        admission = engines[index].admit(keys, request.input_length, request.output_length, now)
        router.placed(index, keys[: request.input_length // params.block_tokens])
        heapq.heappush(pending, (admission.done_at, next(order), admission, index))
        heapq.heappush(pending, (admission.first_token_at, next(order), None, index))
        prompt += request.input_length
        cached += admission.cached_tokens
        ttfts.append(admission.first_token_at - now)
        placements.setdefault(request.conv_id, set()).add(index)
        turns[request.conv_id] += 1
    for _, _, done, _ in pending:
        if done is not None:
            engines[done.engine].finish(done)
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
