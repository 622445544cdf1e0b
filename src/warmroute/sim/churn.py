"""How many keys move when an engine leaves or joins, under warmroute's keyed policy.

Each key's engine is `policies.choose` over an idle snapshot (no load, so only the hashing
speaks), before and after the membership change. Rendezvous hashing moves only the keys of the
engine that left (about 1/N), and on a join only the keys the newcomer now wins (about 1/(N+1)).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from warmroute.gateway import policies
from warmroute.gateway.policies import EngineLoad, RequestFeatures


@dataclass(frozen=True)
class Churn:
    keys: int
    engines: int
    moved_on_leave: float
    moved_on_join: float

    @property
    def ideal_leave(self) -> float:
        return 1.0 / self.engines

    @property
    def ideal_join(self) -> float:
        return 1.0 / (self.engines + 1)


def placements(keys: Sequence[str], ids: Sequence[str], epsilon: float,
               rng: random.Random) -> list[str]:
    snapshot = tuple(EngineLoad(e, 0) for e in ids)
    return [policies.choose(RequestFeatures(key=k), snapshot, epsilon, rng).engine_id
            for k in keys]


def measure_churn(keys: Sequence[str], ids: Sequence[str], epsilon: float, seed: int = 0) -> Churn:
    if len(ids) < 2 or not keys:
        raise ValueError("churn needs at least two engines and one key")
    rng = random.Random(seed)
    before = placements(keys, ids, epsilon, rng)
    leaving = ids[rng.randrange(len(ids))]
    after_leave = placements(keys, [e for e in ids if e != leaving], epsilon, rng)
    after_join = placements(keys, [*ids, "engine-joined"], epsilon, rng)
    moved_leave = sum(1 for a, b in zip(before, after_leave, strict=True) if a != b)
    moved_join = sum(1 for a, b in zip(before, after_join, strict=True) if a != b)
    return Churn(len(keys), len(ids), moved_leave / len(keys), moved_join / len(keys))
