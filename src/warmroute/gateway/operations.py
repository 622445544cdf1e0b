"""What operators see of the fleet (admin routes and the dashboard; never tenants): each engine's
health, load, cache and hit rate, and the gateway's recent activity — requests, routing
decisions by reason, hit rate, time to first token, failovers and resumed streams — over equal
steps of the last minutes (`timeline.py`). URLs only as `EngineEndpoint.shown_url`.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from prometheus_client import CollectorRegistry

from warmroute.gateway.gateway import Gateway
from warmroute.gateway.membership import EngineState
from warmroute.gateway.metrics import FIRST_TOKEN_BUCKETS
from warmroute.gateway.policies import FAILOVER, REASONS
from warmroute.gateway.timeline import Key, Step, counter_totals

M = "warmroute_gateway_"
DECISIONS, ANSWERS = M + "routing_decisions_total", M + "answers_total"
PROMPT, CACHED = M + "prompt_tokens_total", M + "cached_tokens_total"
FAILOVERS, EJECTIONS = M + "failovers_total", M + "ejections_total"
RESUMES = M + "stream_resumes_total"
TTFT = M + "first_token_seconds"
CACHE_FIELDS = ("block_size", "blocks_total", "blocks_used", "blocks_cached", "evictions",
                "hit_rate", "running", "waiting")


def share(part: float, whole: float) -> float | None:
    return part / whole if whole else None


async def engine_report(gw: Gateway) -> list[dict[str, Any]]:
    """Every engine, in configuration order. `cache` is the engine's own `GET /cache` (a
    warmroute engine; None for others or when it does not answer); the hit rate is the share
    of prompt tokens its answers reported cached, as the gateway counted them. The rows are
    made on a worker thread: reading the registry takes ~4 µs a series (at 512 engines, 20 ms)."""
    states = list(gw.membership.engines.values())
    caches = await asyncio.gather(*(gw.engine_json(s.engine_id, "/cache") for s in states))
    homes = gw.placer.homes.per_engine()
    ranked = ({s.engine_id: gw.membership.takes_priority(s.engine_id) for s in states}
              if gw.config.engine_priority else {})
    return await asyncio.to_thread(engine_rows, states, caches, gw.metrics.registry, homes,
                                   ranked)


def engine_rows(states: list[EngineState], caches: list[dict[str, Any] | None],
                registry: CollectorRegistry, homes: dict[str, int],
                ranked: dict[str, bool] | None = None) -> list[dict[str, Any]]:
    """`ranked`: whether each engine is sent a `priority` now (none: `engine_priority` off)."""
    ranked = ranked or {}
    totals = counter_totals(registry)
    answered: dict[str, float] = collections.defaultdict(float)
    for (name, labels), value in totals.items():
        if name == ANSWERS:
            answered[labels[0]] += value
    return [engine_row(s, cache, totals, answered.get(s.engine_id, 0.0),
                       homes.get(s.engine_id, 0), ranked.get(s.engine_id))
            for s, cache in zip(states, caches, strict=True)]


def engine_row(state: EngineState, cache: dict[str, Any] | None, totals: dict[Key, float],
               requests: float, conversations: int, ranked: bool | None = None
               ) -> dict[str, Any]:
    engine = state.engine_id
    prompt = totals.get((PROMPT, (engine,)), 0.0)
    cached = totals.get((CACHED, (engine,)), 0.0)
    return {
        "id": engine,
        "url": state.endpoint.shown_url,
        "model": state.model,
        "healthy": state.healthy,
        "in_flight": state.in_flight,
        "queued_prefill": round(state.queued, 3),
        "waiting": state.waiting,
        "scheduling_policy": state.scheduling_policy,  # as its health answer names it
        "takes_priority": ranked,  # sent a `priority` now; None: `engine_priority` is off
        "requests": int(requests),
        "failovers": int(totals.get((FAILOVERS, (engine,)), 0.0)),
        "ejections": int(totals.get((EJECTIONS, (engine,)), 0.0)),
        "prompt_tokens": int(prompt),
        "cached_tokens": int(cached),
        "hit_rate": share(cached, prompt),
        "conversations": conversations,
        "cache": None if cache is None else cache_summary(cache),
    }


def cache_summary(stats: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {name: stats.get(name) for name in CACHE_FIELDS}
    size, total, cached = (stats.get(k) for k in ("block_size", "blocks_total", "blocks_cached"))
    if isinstance(size, int) and isinstance(total, int) and isinstance(cached, int):
        summary["capacity_tokens"], summary["use"] = size * total, share(cached, total)
    else:
        summary["capacity_tokens"] = summary["use"] = None
    return summary


def activity(gw: Gateway, window_s: float, step_s: float) -> dict[str, Any]:
    """The last `window_s` seconds in steps of `step_s` (`activity_of`)."""
    return activity_of(gw.timeline.steps(window_s, step_s), step_s)


def activity_of(steps: list[Step], step_s: float) -> dict[str, Any]:
    """One list per series, oldest first (`t`: each step's end, Unix seconds); the hit rate
    and mean time to first token are None in a step without traffic. `window` sums them all."""
    whole = merged(steps)
    return {
        "step_s": step_s,
        "t": [round(s.end, 3) for s in steps],
        "requests": [int(s.total(ANSWERS)) for s in steps],
        "decisions": {r: [int(s.value(DECISIONS, r)) for s in steps] for r in REASONS},
        "hit_rate": [share(s.total(CACHED), s.total(PROMPT)) for s in steps],
        "ttft_ms": [ttft_mean_ms(s) for s in steps],
        "failovers": [int(s.value(DECISIONS, FAILOVER)) for s in steps],
        "resumed": [int(s.value(RESUMES, "resumed")) for s in steps],
        "resume_failed": [int(s.value(RESUMES, "failed")) for s in steps],
        "window": window_summary(whole),
    }


def merged(steps: list[Step]) -> Step:
    total: collections.Counter[Key] = collections.Counter()
    for step in steps:
        total.update(step.increase)
    return Step(steps[0].start if steps else 0.0, steps[-1].end if steps else 0.0, dict(total))


def window_summary(step: Step) -> dict[str, Any]:
    return {
        "requests": int(step.total(ANSWERS)),
        "errors": int(step.total(ANSWERS, lambda labels: not labels[1].startswith("2"))),
        "prompt_tokens": int(step.total(PROMPT)),
        "cached_tokens": int(step.total(CACHED)),
        "hit_rate": share(step.total(CACHED), step.total(PROMPT)),
        "ttft_ms": ttft_mean_ms(step),
        "ttft_p50_ms": ttft_quantile_ms(step, 0.5),
        "ttft_p95_ms": ttft_quantile_ms(step, 0.95),
        "decisions": {r: int(step.value(DECISIONS, r)) for r in REASONS},
        "failovers": int(step.value(DECISIONS, FAILOVER)),
        "resumed": int(step.value(RESUMES, "resumed")),
        "resume_failed": int(step.value(RESUMES, "failed")),
    }


def ttft_mean_ms(step: Step) -> float | None:
    count = step.value(TTFT + "_count")
    return round(1000 * step.value(TTFT + "_sum") / count, 1) if count else None


def ttft_quantile_ms(step: Step, q: float) -> float | None:
    """The q-quantile of the step's first-token times, interpolated inside its histogram
    bucket (as Prometheus' `histogram_quantile` does)."""
    count = step.value(TTFT + "_count")
    if not count:
        return None
    rank, lower, below = q * count, 0.0, 0.0
    for bound in FIRST_TOKEN_BUCKETS:
        upto = step.value(TTFT + "_bucket", str(bound))
        if upto >= rank:
            inside = upto - below
            fraction = (rank - below) / inside if inside else 1.0
            return round(1000 * (lower + (bound - lower) * fraction), 1)
        lower, below = bound, upto
    return round(1000 * FIRST_TOKEN_BUCKETS[-1], 1)
