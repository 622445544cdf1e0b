"""One simulated engine in the discrete-event simulation: cache accounting and timing.

The cache is the engine's real `PrefixCache` over a `BlockPool`, with one block per trace block
(512 tokens) keyed by the trace's prefix hash ids, so hits and LRU evictions follow the engine's
own code. Timing follows the simulated engine's latency profile and its scheduler: prefills run
one chunk at a time, back to back, and the answer then decodes at one step per token. Under the
`fcfs` policy a prefill once begun runs to its end, in arrival order (the chunking changes
nothing then); under `priority` each chunk of at most `chunk_tokens` goes to the best-ranked
prefill waiting or begun (lowest rank, then arrival), as the engine's scheduler does, so a
request ranked first overtakes a long prefill at its next chunk (the decode step the engine
runs between two chunks is not charged here). `admit` queues a request; `advance` runs the
chunks that begin by a given time and returns the requests whose first token they produced.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from warmroute.engine.block_pool import Block, BlockPool
from warmroute.engine.prefix_cache import PrefixCache
from warmroute.engine.sim_profile import SimProfile


@dataclass
class Admission:
    """A request placed on an engine: what it reused, and (once its prefill has run) when its
    first token and its end come. `ticket`: its placement's number, as its router counts."""

    engine: int
    cached_tokens: int
    arrived_at: float
    output_length: int
    ticket: int
    remaining: int  # prompt tokens still to prefill
    batch: int  # the answers in flight on its engine as it came: its decode steps' batch
    held: list[Block] = field(default_factory=list)
    first_token_at: float = float("nan")
    done_at: float = float("nan")


def block_keys(hash_ids: Sequence[int]) -> list[bytes]:
    return [h.to_bytes(8, "little", signed=True) for h in hash_ids]


class SimulatedEngine:
    def __init__(self, index: int, num_blocks: int, block_tokens: int,
                 profile: SimProfile, chunk_tokens: int | None = None) -> None:
        """`chunk_tokens`: the most prompt tokens one prefill chunk takes (None: a prompt is
        prefilled whole, one request after the other)."""
        if chunk_tokens is not None and chunk_tokens < 1:
            raise ValueError("a prefill chunk takes at least one token")
        self.index = index
        self.block_tokens = block_tokens
        self.profile = profile
        self.num_blocks = num_blocks
        self.chunk_tokens = chunk_tokens
        self._cache: PrefixCache | None = None  # built on first use: 1,000 pools add up
        self.in_flight = 0
        self.served = 0
        self.free_at = 0.0  # when the chunk being prefilled ends (the next may begin)
        self.prefills: list[tuple[float, int, Admission]] = []  # (rank, arrival, admission)
        self._arrivals = itertools.count()

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
              now: float, ticket: int = 0, rank: float | None = None) -> Admission:
        """Look the prompt up, publish its full blocks, and queue its prefill, ranked by `rank`
        (lower first; None: its arrival, `now`)."""
        cache = self.cache
        hits = cache.lookup(keys, input_length)
        held = list(hits)
        cache.insert(held, keys[: input_length // self.block_tokens])
        cached = len(hits) * self.block_tokens
        self.in_flight += 1
        self.served += 1
        admission = Admission(self.index, cached, now, output_length, ticket,
                              max(0, input_length - cached), self.in_flight, held)
        if not self.prefills:
            self.free_at = max(self.free_at, now)
        heapq.heappush(self.prefills,
                       (now if rank is None else rank, next(self._arrivals), admission))
        return admission

    def advance(self, until: float) -> list[Admission]:
        """Run the prefill chunks that begin by `until` (each to its end); the admissions whose
        first token came of them, with their first-token and end times."""
        out: list[Admission] = []
        while self.prefills and self.free_at <= until:
            admission = self.prefills[0][2]
            tokens = admission.remaining
            if self.chunk_tokens is not None:
                tokens = min(tokens, self.chunk_tokens)
            self.free_at += self.profile.prefill_s(tokens)
            admission.remaining -= tokens
            if admission.remaining > 0:
                continue
            heapq.heappop(self.prefills)
            admission.first_token_at = self.free_at
            steps = max(0, admission.output_length - 1)
            admission.done_at = self.free_at + steps * self.profile.decode_step_s(admission.batch)
            out.append(admission)
        return out

    def finish(self, admission: Admission) -> None:
        self.cache.release(admission.held)
        self.in_flight -= 1

    def check_integrity(self) -> None:
        if self._cache is not None:
            self._cache.pool.check_integrity()
