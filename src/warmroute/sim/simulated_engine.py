"""One simulated engine in the discrete-event simulation: cache accounting and timing.

The cache is the engine's real `PrefixCache` over a `BlockPool`, with one block per trace block
(512 tokens) keyed by the trace's prefix hash ids, so hits and LRU evictions follow the engine's
own code. Timing follows the simulated engine's latency profile: prefills run one at a time
(a request waits for the prefill ahead of it), then the answer decodes at one step per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from warmroute.engine.block_pool import Block, BlockPool
from warmroute.engine.prefix_cache import PrefixCache
from warmroute.engine.sim_profile import SimProfile


@dataclass
class Admission:
    """A request placed on an engine: what it reused, when its first token and its end come."""

    engine: int
    cached_tokens: int
    first_token_at: float
    done_at: float
    held: list[Block]


def block_keys(hash_ids: Sequence[int]) -> list[bytes]:
    return [h.to_bytes(8, "little", signed=True) for h in hash_ids]


class SimulatedEngine:
    def __init__(self, index: int, num_blocks: int, block_tokens: int,
                 profile: SimProfile) -> None:
        self.index = index
        self.block_tokens = block_tokens
        self.profile = profile
        self.num_blocks = num_blocks
        self._cache: PrefixCache | None = None  # built on first use: 1,000 pools add up
        self.in_flight = 0
        self.prefill_free_at = 0.0
        self.served = 0

    @property
    def cache(self) -> PrefixCache:
        if self._cache is None:
            self._cache = PrefixCache(BlockPool(self.num_blocks), self.block_tokens)
        return self._cache

    def matched_blocks(self, keys: Sequence[bytes], input_length: int) -> int:
        """How many leading blocks a request would hit here, without touching the cache."""
        if self._cache is None:
            return 0
        pool = self._cache.pool
        limit = max(0, (input_length - 1) // self.block_tokens)
        count = 0
        for key in keys[:limit]:
            if pool.get_cached_block(key) is None:
                break
            count += 1
        return count

    def has_block(self, key: bytes) -> bool:
        return self._cache is not None and self._cache.pool.get_cached_block(key) is not None

    def admit(self, keys: Sequence[bytes], input_length: int, output_length: int,
              now: float) -> Admission:
        """Look the prompt up, publish its full blocks, and schedule its prefill and decode."""
        cache = self.cache
        hits = cache.lookup(keys, input_length)
        held = list(hits)
        cache.insert(held, keys[: input_length // self.block_tokens])
        cached = len(hits) * self.block_tokens
        start = max(now, self.prefill_free_at)
        first = start + self.profile.prefill_s(input_length - cached)
        self.prefill_free_at = first
        self.in_flight += 1
        self.served += 1
        steps = max(0, output_length - 1)
        done = first + steps * self.profile.decode_step_s(self.in_flight)
        return Admission(self.index, cached, first, done, held)

    def finish(self, admission: Admission) -> None:
        self.cache.release(admission.held)
        self.in_flight -= 1

    def check_integrity(self) -> None:
        if self._cache is not None:
            self._cache.pool.check_integrity()
