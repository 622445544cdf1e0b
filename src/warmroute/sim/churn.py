"""How many keys move when an engine leaves or joins, under warmroute's keyed policies.

- `hash` (stateless rendezvous): each key's engine is `policies.choose` over an idle snapshot
  (no load, so only the hashing speaks), before and after the membership change. Rendezvous
  hashing moves only the keys of the engine that left (about 1/N), and on a join only the keys
  the newcomer now wins (about 1/(N+1)).
- `cache-aware` (the default): each key is placed once by a `CacheAwarePlacer`, then asked
  again after the change, from a copy of that state. Homes stay, so a leave moves exactly the
  leaver's conversations (about 1/N) and a join moves none: the newcomer fills with new ones.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass

from warmroute.gateway import policies
from warmroute.gateway.placement import CacheAwarePlacer, PlacementParams
from warmroute.gateway.policies import EngineLoad, RequestFeatures

JOINED = "engine-joined"


@dataclass(frozen=True)
class Churn:
    policy: str
    keys: int
    engines: int
    moved_on_leave: float
    moved_on_join: float

    @property
    def ideal_leave(self) -> float:
        return 1.0 / self.engines

    @property
    def ideal_join(self) -> float:
        """What hashing must move to give the newcomer its share; a sticky table needs 0."""
        return 1.0 / (self.engines + 1) if self.policy == "hash" else 0.0


def hashed(keys: Sequence[str], ids: Sequence[str], epsilon: float,
           rng: random.Random) -> list[str]:
    snapshot = tuple(EngineLoad(e, 0) for e in ids)
    return [policies.choose(RequestFeatures(key=k), snapshot, epsilon, rng).engine_id
            for k in keys]


def placed(placer: CacheAwarePlacer, keys: Sequence[str], ids: Sequence[str]) -> list[str]:
    loads = dict.fromkeys(ids, 0)
    return [placer.place(RequestFeatures(key=k), loads).engine_id for k in keys]


def measure_churn(keys: Sequence[str], ids: Sequence[str], epsilon: float, seed: int = 0,
                  policy: str = "hash") -> Churn:
    if len(ids) < 2 or not keys:
        raise ValueError("churn needs at least two engines and one key")
    if policy not in ("hash", "cache-aware"):
        raise ValueError(f"unknown policy {policy!r}")
    rng = random.Random(seed)
    leaving = ids[rng.randrange(len(ids))]
    staying = [e for e in ids if e != leaving]
    if policy == "hash":
        before = hashed(keys, ids, epsilon, rng)
        after_leave = hashed(keys, staying, epsilon, rng)
        after_join = hashed(keys, [*ids, JOINED], epsilon, rng)
    else:
        placer = CacheAwarePlacer(PlacementParams(epsilon))
        before = placed(placer, keys, ids)
        left = copy.deepcopy(placer)
        left.engine_lost(leaving)
        after_leave = placed(left, keys, staying)
        after_join = placed(copy.deepcopy(placer), keys, [*ids, JOINED])
    moved_leave = sum(1 for a, b in zip(before, after_leave, strict=True) if a != b)
    moved_join = sum(1 for a, b in zip(before, after_join, strict=True) if a != b)
    return Churn(policy, len(keys), len(ids), moved_leave / len(keys), moved_join / len(keys))
