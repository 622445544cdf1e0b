"""Placement in the simulation: the gateway's own policy functions, plus an offline oracle.

- `PolicyRouter` builds the same `EngineLoad` snapshot the gateway's membership does and calls
  `policies.choose` (keyed on the conversation id, or keyless on `features.affinity_digest` of
  the very messages the bench would send) or `policies.round_robin`, timing each decision;
  With `slack=k` it evaluates a what-if bound of max(⌈(1+ε)·avg⌉, avg + k), by passing
  `choose` the ε that yields it;
- `OracleRouter` is the load-bounded longest-prefix reference: among engines under the same
  ⌈(1+ε)·average⌉ cap, the one whose cache holds the longest prefix of the request (it reads the
  engines' caches, which a router cannot), ties to the least loaded, then the least used. The
  load it bounds is requests served so far (`served`, as the traces README's oracle does; its
  0.262 / 0.353 at 4 / 16 engines are reproduced) or requests in flight (`in-flight`).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence
from typing import Protocol

from warmroute.bench.textgen import BlockText
from warmroute.bench.traces import TraceRequest
from warmroute.gateway import features, policies
from warmroute.gateway.policies import EngineLoad, RequestFeatures
from warmroute.sim.engine import SimulatedEngine

AFFINITY_WORDS = 300  # more than the 1 KiB of the first user message the digest reads


class Router(Protocol):
    """`decision_s`: seconds each placement took (the policy call, not the snapshot)."""

    name: str
    decision_s: list[float]
    snapshot_s: list[float]

    def place(self, request: TraceRequest, keys: Sequence[bytes],
              engines: Sequence[SimulatedEngine]) -> int: ...

    def placed(self, engine: int, keys: Sequence[bytes]) -> None: ...


class PolicyRouter:
    """warmroute's `choose` (keyed or keyless) or the round-robin floor, as the gateway runs it."""

    def __init__(self, name: str, engine_ids: Sequence[str], epsilon: float,
                 rng: random.Random, slack: int = 0) -> None:
        if name not in ("warmroute", "warmroute-keyless", "round-robin"):
            raise ValueError(f"unknown policy {name!r}")
        self.name = name if not slack else f"{name} (slack {slack})"
        self.keyed = name == "warmroute"
        self.round_robin = name == "round-robin"
        self.slack = slack
        self.ids = list(engine_ids)
        self.index = {engine_id: i for i, engine_id in enumerate(self.ids)}
        self.epsilon = epsilon
        self.rng = rng
        self.turns = itertools.count()
        self.blocks = BlockText()
        self.decision_s: list[float] = []
        self.snapshot_s: list[float] = []  # building the `EngineLoad` tuple, as membership does

    def features(self, request: TraceRequest) -> RequestFeatures:
        if self.keyed:
            return RequestFeatures(key=request.conv_id)
        ids = request.hash_ids
        system = " ".join(self.blocks.block(ids[0])) if ids else ""
        user_words = min(AFFINITY_WORDS, max(0, request.input_length - self.blocks.block_tokens))
        user = " ".join(self.blocks.block(ids[1], user_words)) if len(ids) > 1 else "continue"
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return RequestFeatures(affinity=features.affinity_digest(messages))

    def place(self, request: TraceRequest, keys: Sequence[bytes],
              engines: Sequence[SimulatedEngine]) -> int:
        wanted = None if self.round_robin else self.features(request)
        started = time.perf_counter()
        snapshot = tuple(EngineLoad(self.ids[e.index], e.in_flight) for e in engines)
        decided = time.perf_counter()
        if wanted is None:
            decision = policies.round_robin(next(self.turns), snapshot)
        else:
            decision = policies.choose(wanted, snapshot, self.epsilon_for(snapshot), self.rng)
        done = time.perf_counter()
        self.snapshot_s.append(decided - started)
        self.decision_s.append(done - decided)
        return self.index[decision.engine_id]

    def epsilon_for(self, snapshot: Sequence[EngineLoad]) -> float:
        """ε, or with `slack` the smallest ε ≥ it whose cap is at least average + slack: a what-if
        for an additive floor on the bound, evaluated with the unchanged `choose`."""
        if not self.slack:
            return self.epsilon
        placed = sum(e.in_flight for e in snapshot) + 1
        return max(self.epsilon, self.slack * len(snapshot) / placed)

    def placed(self, engine: int, keys: Sequence[bytes]) -> None:
        """Policies keep no state."""


class OracleRouter:
    """Longest cached prefix under the load cap; an index of block key → engines that cached
    it (entries checked against the engine's pool, since engines evict) keeps it fast."""

    name: str

    def __init__(self, epsilon: float, bound: str = "served") -> None:
        if bound not in ("served", "in-flight"):
            raise ValueError(f"unknown oracle bound {bound!r}")
        self.name = "oracle" if bound == "served" else "oracle (in-flight bound)"
        self.bound = bound
        self.epsilon = epsilon
        self.holders: dict[bytes, set[int]] = {}
        self.decision_s: list[float] = []
        self.snapshot_s: list[float] = []

    def place(self, request: TraceRequest, keys: Sequence[bytes],
              engines: Sequence[SimulatedEngine]) -> int:
        started = time.perf_counter()
        cap = policies.load_cap(sum(self.load(e) for e in engines), len(engines), self.epsilon)
        limit = max(0, (request.input_length - 1) // engines[0].block_tokens)
        best, best_len = -1, 0
        for level in range(min(limit, len(keys)) - 1, -1, -1):
            if level < best_len - 1:
                break  # every engine matching best_len blocks or more holds a deeper block
            holders = self.holders.get(keys[level], set())
            for e in list(holders):
                engine = engines[e]
                if not engine.has_block(keys[level]):
                    holders.discard(e)
                    continue
                if self.load(engine) >= cap:
                    continue
                length = engine.matched_blocks(keys, request.input_length)
                if length and (length, *_spread(engines, e)) > (best_len, *_spread(engines, best)):
                    best, best_len = e, length
        if best < 0:
            best = max(range(len(engines)), key=lambda i: _spread(engines, i))
        self.decision_s.append(time.perf_counter() - started)
        return best

    def load(self, engine: SimulatedEngine) -> int:
        return engine.served if self.bound == "served" else engine.in_flight

    def placed(self, engine: int, keys: Sequence[bytes]) -> None:
        for key in keys:
            self.holders.setdefault(key, set()).add(engine)


def _spread(engines: Sequence[SimulatedEngine], index: int) -> tuple[int, int, int]:
    """Larger is better among equal matches: fewer in flight, fewer served, lower index."""
    if index < 0:
        return (-(1 << 30), 0, 0)
    engine = engines[index]
    return (-engine.in_flight, -engine.served, -index)
