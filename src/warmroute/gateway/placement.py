"""Cache-aware sticky placement (`--policy cache-aware`, the default).

Two things decide where a request goes (`reference/routing-anchors.md` §3.4, and what the fleet
bench showed: routers that only follow a conversation id reach pure stickiness, a keyless
cache-aware router reaches the longest-prefix oracle but moves conversations):

1. **A conversation stays where it was placed.** A keyed request whose conversation already has
   a home engine goes there ("sticky") while that engine is healthy and under the in-flight cap
   ⌈(1+ε)·average⌉ (with the additive `slack` floor). A full home spills this one request
   ("spilled") and keeps its home; a home that failed is replaced ("rehomed").
2. **A new conversation is placed where its prefix is warm, within the load bound.** Among the
   engines under the in-flight cap *and* under the balance cap on recent requests served,
   ⌈(1+ε)·average⌉ again, the ones whose caches (as `PrefixIndex` pictures them) hold the
   longest leading run of the prompt win ("prefix"); with no run at all, or ties, the least
   loaded (in flight, then recently served, then a stable hash) wins ("least-loaded").
   Keyless requests are always placed this way, so a keyless conversation follows its own
   growing prefix, and a shared system prompt spreads under the balance cap.

State is small and local: a bounded LRU of conversation → home, the prefix index, and per-engine
served counts halved every `decay_every` requests so the balance follows recent traffic. The
clock never enters; `place` is synchronous and cheap (linear in the healthy engines only for
new conversations' tie-breaks), so a simulator drives this very object.
"""

from __future__ import annotations

import heapq
import itertools
import math
import zlib
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from itertools import repeat

from warmroute.errors import EngineUnavailable
from warmroute.gateway.policies import FLOAT_SLACK, Decision, Reason, RequestFeatures, load_cap
from warmroute.gateway.prefix_index import PrefixIndex

MAX_ALTERNATIVES = 7
SAMPLE = 32  # failover candidates looked at in a large fleet
DEFAULT_MAX_CONVERSATIONS = 1_000_000


@dataclass(frozen=True)
class PlacementParams:
    epsilon: float = 0.25
    slack: int = 10
    balance_epsilon: float = 0.05
    max_conversations: int = DEFAULT_MAX_CONVERSATIONS
    decay_every: int = 0  # 0: 1,000 requests per engine


class CacheAwarePlacer:
    def __init__(self, params: PlacementParams | None = None,
                 index: PrefixIndex | None = None) -> None:
        self.params = params or PlacementParams()
        self.index = index or PrefixIndex()
        self.homes: OrderedDict[str, str] = OrderedDict()
        self.served: dict[str, float] = {}
        self._since_decay = 0
        self._hashes: dict[str, int] = {}
        self._order: list[str] = []  # every engine seen, in a fixed order (for windows)
        self._ordinal: dict[str, int] = {}
        self._known = 0

    # -- decisions ----------------------------------------------------------------------------

    def place(self, features: RequestFeatures, loads: Mapping[str, int]) -> Decision:
        """Choose among the healthy engines `loads` (engine → requests in flight) and record
        the choice (home, prefix index, served count)."""
        if not loads:
            raise EngineUnavailable("no healthy engine is available")
        cap = load_cap(sum(loads.values()), len(loads), self.params.epsilon, self.params.slack)
        key = features.key
        home = self.homes.get(key) if key is not None else None
        if home is not None and home in loads:
            if loads[home] < cap:
                decision = Decision(self._ranked(home, loads), "sticky")
                self._record(features, decision.engine_id, rehome=False)
                return decision
            chosen, _ = self._new_placement(features, loads, cap, exclude=home)
            decision = Decision(self._ranked(chosen, loads, home), "spilled")
            self._record(features, chosen, rehome=False)
            return decision
        chosen, reason = self._new_placement(features, loads, cap)
        decision = Decision(self._ranked(chosen, loads), "rehomed" if home else reason)
        self._record(features, chosen, rehome=True)
        return decision

    def _new_placement(self, features: RequestFeatures, loads: Mapping[str, int], cap: int,
                       exclude: str | None = None) -> tuple[str, Reason]:
        if max(loads.values()) < cap:  # the common case, at C speed
            open_ = set(loads)
            open_.discard(exclude)
        else:
            open_ = {e for e, n in loads.items() if n < cap and e != exclude}
        if features.chunks:
            # Where most of the prompt is cached already, it goes there under the hot-spot
            # bound ⌈(1+ε)·average served⌉: a keyless conversation's own history, a document
            # shared by many conversations (a shared system prompt that is most of short
            # requests spreads at that bound, not at the tight balance one).
            depth, warm = self.index.match(features.chunks, open_)
            if 2 * depth >= len(features.chunks):
                homes = self._under_served_cap(warm, loads, self.params.epsilon)
                if homes:
                    return self._least_loaded(homes, loads, features), "prefix"
        eligible = self._under_served_cap(open_, loads, self.params.balance_epsilon)
        if not eligible:
            eligible = open_ or {e for e in loads if e != exclude} or set(loads)
        depth, warm = self.index.match(features.chunks, eligible)
        if depth > 0:
            return self._least_loaded(warm, loads, features), "prefix"
        return self._least_loaded(eligible, loads, features), "least-loaded"

    def _under_served_cap(self, pool: set[str], loads: Mapping[str, int],
                          epsilon: float) -> set[str]:
        """Those of `pool` that have served fewer than ⌈(1+ε)·average⌉ recent requests."""
        if not pool:
            return pool
        served = self.served
        total = sum(map(served.get, loads, repeat(0.0)))
        cap = math.ceil((1.0 + epsilon) * (total + 1) / len(loads) - FLOAT_SLACK)
        if max(map(served.get, pool, repeat(0.0))) < cap:
            return pool
        return {e for e in pool if served.get(e, 0.0) < cap}

    def _least_loaded(self, pool: set[str], loads: Mapping[str, int],
                      features: RequestFeatures) -> str:
        """Fewest in flight, then fewest recently served, then a stable hash of the request.
        In a large pool, among a window of the fleet chosen by the request's hash (the least
        loaded of a few dozen random choices balances almost as well as of all)."""
        salt = zlib.crc32(tie_salt(features).encode())
        candidates: Collection[str] = pool
        if len(pool) > 2 * SAMPLE:
            candidates = self._window(pool, salt, loads)
        fewest = min(map(loads.__getitem__, candidates))
        tied = [e for e in candidates if loads[e] == fewest]
        if len(tied) > 1:
            served = self.served
            least = min(map(served.get, tied, repeat(0.0)))
            tied = [e for e in tied if served.get(e, 0.0) <= least + FLOAT_SLACK]
        if len(tied) == 1:
            return tied[0]
        return max(tied, key=lambda e: (self._engine_hash(e) ^ salt, e))

    def _window(self, pool: set[str], salt: int, loads: Mapping[str, int]) -> Collection[str]:
        """Up to `SAMPLE` members of `pool` from a stretch of the fleet's fixed order that
        starts where `salt` says; the whole pool if the stretch holds too few of them."""
        if len(self._order) < len(loads) or self._known != len(loads):
            for engine_id in loads:
                if engine_id not in self._ordinal:
                    self._ordinal[engine_id] = len(self._order)
                    self._order.append(engine_id)
            self._known = len(loads)
        order = self._order
        start = salt % len(order)
        stretch = itertools.islice(itertools.chain(order[start:], order[:start]), 4 * SAMPLE)
        picked = list(itertools.islice((e for e in stretch if e in pool), SAMPLE))
        return picked if len(picked) >= SAMPLE // 4 else pool

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
            start = self._engine_hash(chosen) % len(loads)
            others = itertools.islice(itertools.chain(itertools.islice(loads, start, None),
                                                      loads), SAMPLE)
        rest = heapq.nsmallest(
            MAX_ALTERNATIVES, (e for e in others if e not in head), key=lambda e: (loads[e], e)
        )
        return (*head, *rest)

    # -- state --------------------------------------------------------------------------------

    def _record(self, features: RequestFeatures, engine_id: str, rehome: bool) -> None:
        key = features.key
        if key is not None:
            if rehome or key not in self.homes:
                self.homes[key] = engine_id
            self.homes.move_to_end(key)
            while len(self.homes) > self.params.max_conversations:
                self.homes.popitem(last=False)
        self.index.insert(engine_id, features.chunks)
        self.served[engine_id] = self.served.get(engine_id, 0.0) + 1.0
        self._since_decay += 1
        period = self.params.decay_every or 1000 * max(1, len(self.served))
        if self._since_decay >= period:
            self._since_decay = 0
            for engine in self.served:
                self.served[engine] /= 2.0

    def engine_lost(self, engine_id: str) -> None:
        """An engine failed: its cache is gone. Homes move on their next request."""
        self.index.forget(engine_id)

    def home_of(self, key: str) -> str | None:
        return self.homes.get(key)


def tie_salt(features: RequestFeatures) -> str:
    if features.key is not None:
        return features.key
    if features.chunks:
        return str(features.chunks[0])
    return features.affinity or ""
