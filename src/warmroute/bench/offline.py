"""Reference figures for a trace replay in `bench fleet`, computed offline from the same requests.

Two numbers frame the routers' measured hit rates: the ceiling (one infinite cache shared by
everything, `sim.des.ceiling_hit_rate`) and the load-bounded longest-prefix oracle over the same
number of engines, run in the discrete-event simulator (`sim.des.simulate` with `OracleRouter`,
bounded on requests served) with each engine's cache converted to 512-token trace blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from warmroute.engine.sim_profile import SimProfile
from warmroute.sim.des import SimParams, ceiling_hit_rate, simulate
from warmroute.sim.routers import OracleRouter
from warmroute.sim.traces import TraceRequest

TRACE_BLOCK_TOKENS = 512


def replayed_requests(requests: Sequence[TraceRequest],
                      max_output_tokens: int) -> list[TraceRequest]:
    """The requests as the replay sends them: answers capped as `trace_workload` caps them."""
    return [replace(r, output_length=max(1, min(r.output_length, max_output_tokens)))
            for r in requests]


def trace_cache_blocks(cache_blocks: int | None, block_size: int, profile: SimProfile) -> int:
    """A simulated engine's cache in 512-token trace blocks (at least 1). Without
    `--cache-blocks` the engine holds the profile's default tokens (`engine.sim`)."""
    if cache_blocks is None:
        cache_blocks = profile.default_cache_tokens // block_size
    return max(1, max(1, cache_blocks) * block_size // TRACE_BLOCK_TOKENS)


def reference_figures(requests: Sequence[TraceRequest], engines: int, cache_blocks_512: int,
                      epsilon: float, time_scale: float, profile: SimProfile) -> dict[str, Any]:
    """The ceiling and the oracle's hit rate, max/avg requests per engine and sticky share."""
    params = SimParams(engines=engines, cache_blocks=cache_blocks_512,
                       block_tokens=TRACE_BLOCK_TOKENS, epsilon=epsilon, time_scale=time_scale,
                       profile=profile)
    oracle = simulate(requests, OracleRouter(epsilon, bound="served"), params)
    return {
        "ceiling": ceiling_hit_rate(requests, TRACE_BLOCK_TOKENS),
        "oracle_hit_rate": oracle.hit_rate,
        "oracle_max_over_avg": oracle.max_over_avg,
        "oracle_sticky": oracle.sticky,
        "cache_blocks_512": cache_blocks_512,
        "engines": engines,
        "requests": len(requests),
    }
