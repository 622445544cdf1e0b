"""Placement policies: pure functions from (request features, engine snapshot) to ranked engines.

No I/O, no clock, no state: randomness comes in as a `random.Random`, so the gateway and a
simulator run the very same code. The first engine of a `Decision` serves the request; the rest
is where it fails over to, in order (`reference/routing-anchors.md` §3.4).

- keyed: rendezvous (highest-random-weight) hashing of the key over the healthy engines gives a
  preference list; the first engine under the bounded-load cap takes it ("keyed" if that is the
  key's first choice, else "spilled" to the key's own next choice).
- keyless: the same over an affinity digest of the prompt ("keyless-affinity"), under the same
  cap; when its first choice is full, the least-loaded engine ("least-loaded").
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

from warmroute.errors import EngineUnavailable

Reason = Literal[
    "keyed", "spilled", "keyless-affinity", "least-loaded", "round-robin",
    "sticky", "prefix", "rehomed",
]
FAILOVER = "failover"
REASONS: tuple[str, ...] = (
    "keyed", "spilled", "keyless-affinity", "least-loaded", "round-robin",
    "sticky", "prefix", "rehomed", FAILOVER,
)
FLOAT_SLACK = 1e-9


@dataclass(frozen=True)
class EngineLoad:
    """One healthy engine as a policy sees it."""

    engine_id: str
    in_flight: int


@dataclass(frozen=True)
class RequestFeatures:
    """What placement may look at: the routing key, an affinity digest of the prompt's opening
    (the `hash` policy's keyless path), the prompt's chained chunk digests (the `cache-aware`
    policy's prefix index) and the tenant they belong to."""

    key: str | None = None
    affinity: str | None = None
    chunks: tuple[Hashable, ...] = ()
    # Whose conversation and prompt this is (a short digest of the tenant's cache salt): the
    # cache-aware placer keeps homes per (tenant, key), and `chunks` are salted with it.
    tenant: str = ""


@dataclass(frozen=True)
class Decision:
    """`work`: the prefill this request is expected to queue on its engine (prompt chunks the
    engine is not thought to hold, plus the scheduler step it takes: `placement.prefill_work`);
    the cache-aware placer balances on it."""

    ranked: tuple[str, ...]
    reason: Reason
    work: float = 0.0

    @property
    def engine_id(self) -> str:
        return self.ranked[0]


def hrw_score(key: str, engine_id: str) -> int:
    """Rendezvous weight of (key, engine); stable across processes and Python versions."""
    digest = hashlib.blake2b(f"{key}\x00{engine_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def preference(key: str, engine_ids: Sequence[str]) -> tuple[str, ...]:
    """The key's engines, best first. Removing an engine moves only the keys it was first for."""
    return tuple(sorted(engine_ids, key=lambda e: (hrw_score(key, e), e), reverse=True))


def load_cap(total_in_flight: int, engines: int, epsilon: float, slack: int = 0) -> int:
    """⌈(1+ε)·average⌉, the average counting the request being placed: an engine with fewer
    than this many requests in flight may take one more. A `slack` k raises the cap to at
    least ⌈average⌉ + k, so that at low load (cap 1–2) a busy first choice is not "full"."""
    average = (total_in_flight + 1) / engines
    bounded = math.ceil((1.0 + epsilon) * average - FLOAT_SLACK)
    return max(bounded, math.ceil(average - FLOAT_SLACK) + slack) if slack else bounded


def choose(
    features: RequestFeatures,
    snapshot: Sequence[EngineLoad],
    epsilon: float,
    rng: random.Random,
    slack: int = 0,
) -> Decision:
    """Rank the healthy engines in `snapshot` for one request; raise if there are none."""
    if not snapshot:
        raise EngineUnavailable("no healthy engine is available")
    loads = {e.engine_id: e.in_flight for e in snapshot}
    cap = load_cap(sum(loads.values()), len(loads), epsilon, slack)
    if features.key is not None:
        pref = preference(features.key, list(loads))
        for index, engine_id in enumerate(pref):
            if loads[engine_id] < cap:
                ranked = (engine_id, *pref[:index], *pref[index + 1 :])
                return Decision(ranked, "keyed" if index == 0 else "spilled")
        return least_loaded(pref, loads)
    if features.affinity is not None:
        pref = preference(features.affinity, list(loads))
        if loads[pref[0]] < cap:
            return Decision(pref, "keyless-affinity")
        return least_loaded(pref, loads)
    ids = list(loads)
    rng.shuffle(ids)
    return least_loaded(ids, loads)


def least_loaded(order: Sequence[str], loads: dict[str, int]) -> Decision:
    """Engines by in-flight load; ties keep `order` (a key's preference, or a shuffle)."""
    return Decision(tuple(sorted(order, key=lambda e: loads[e])), "least-loaded")


def round_robin(turn: int, snapshot: Sequence[EngineLoad]) -> Decision:
    """The baseline that ignores keys and caches: engine `turn mod n`, then the others in order."""
    if not snapshot:
        raise EngineUnavailable("no healthy engine is available")
    ids = sorted(e.engine_id for e in snapshot)
    start = turn % len(ids)
    return Decision(tuple(ids[start:] + ids[:start]), "round-robin")
