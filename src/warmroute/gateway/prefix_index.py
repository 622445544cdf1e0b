"""The gateway's approximate picture of each engine's prefix cache.

A prompt is cut into chained chunk digests (`features.prompt_chunks`: digest k covers chunks
0..k, so equal digests mean equal prefixes, like the engines' own block hashes). Every request
routed to an engine records its digests there; each engine's record is an LRU bounded by what
its cache can hold (its reported cache size in tokens, converted to chunks), so the picture
forgets roughly when the engine evicts. An engine that fails or restarts is forgotten whole.

`match` answers "which engines, among these, hold the longest leading run of this prompt's
chunks?" by walking the digests and intersecting their holder sets: its cost is the matched
depth times the (shrinking) number of holders, not the fleet size times the prompt length.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence, Set

DEFAULT_CAPACITY_CHUNKS = 1 << 16


class PrefixIndex:
    """`sizes`: where an engine's capacity in chunks comes from when it was not set (the
    gateway reads its engines' health answers); else `default_capacity`. A capacity that
    shrinks takes effect at that engine's next insert."""

    def __init__(self, default_capacity: int = DEFAULT_CAPACITY_CHUNKS,
                 sizes: Callable[[str], int | None] | None = None) -> None:
        if default_capacity < 1:
            raise ValueError("an engine's index capacity must be at least one chunk")
        self.default_capacity = default_capacity
        self.sizes = sizes
        self.holders: dict[Hashable, set[str]] = {}
        self.recency: dict[str, OrderedDict[Hashable, None]] = {}
        self.capacity: dict[str, int] = {}

    def set_capacity(self, engine_id: str, chunks: int) -> None:
        """How many chunks `engine_id`'s cache holds; older records beyond it are dropped."""
        self.capacity[engine_id] = max(1, chunks)
        self._evict(engine_id)

    def capacity_of(self, engine_id: str) -> int:
        fixed = self.capacity.get(engine_id)
        if fixed is not None:
            return fixed
        reported = self.sizes(engine_id) if self.sizes is not None else None
        return max(1, reported) if reported is not None else self.default_capacity

    def size(self, engine_id: str) -> int:
        return len(self.recency.get(engine_id, ()))

    def insert(self, engine_id: str, chunks: Sequence[Hashable]) -> None:
        """`engine_id` now holds these chunks (most recently used last)."""
        if not chunks:
            return
        recent = self.recency.setdefault(engine_id, OrderedDict())
        for chunk in chunks:
            if chunk in recent:
                recent.move_to_end(chunk)
                continue
            recent[chunk] = None
            holders = self.holders.get(chunk)
            if holders is None:
                self.holders[chunk] = {engine_id}
            else:
                holders.add(engine_id)
        self._evict(engine_id)

    def forget(self, engine_id: str) -> None:
        """The engine's cache is gone (it failed or restarted)."""
        for chunk in self.recency.pop(engine_id, OrderedDict()):
            self._drop_holder(chunk, engine_id)

    def match(self, chunks: Sequence[Hashable], eligible: Set[str]) -> tuple[int, set[str]]:
        """The longest leading run of `chunks` some eligible engine holds, and every eligible
        engine that holds that run: (depth in chunks, engines). (0, empty) when none holds
        even the first chunk."""
        depth, best = 0, set[str]()
        candidates: set[str] | None = None
        for level, chunk in enumerate(chunks, 1):
            holders = self.holders.get(chunk)
            if not holders:
                break
            candidates = holders & eligible if candidates is None else candidates & holders
            if not candidates:
                break
            depth, best = level, candidates
        return depth, best

    def matched_depth(self, engine_id: str, chunks: Sequence[Hashable]) -> int:
        """How many leading chunks `engine_id` holds."""
        recent = self.recency.get(engine_id)
        if not recent:
            return 0
        depth = 0
        for chunk in chunks:
            if chunk not in recent:
                break
            depth += 1
        return depth

    def _evict(self, engine_id: str) -> None:
        recent = self.recency.get(engine_id)
        if recent is None:
            return
        limit = self.capacity_of(engine_id)
        while len(recent) > limit:
            chunk, _ = recent.popitem(last=False)
            self._drop_holder(chunk, engine_id)

    def _drop_holder(self, chunk: Hashable, engine_id: str) -> None:
        holders = self.holders.get(chunk)
        if holders is None:
            return
        holders.discard(engine_id)
        if not holders:
            del self.holders[chunk]
