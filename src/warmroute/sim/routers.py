"""Placement in the simulation: the gateway's own policy functions, plus an offline oracle.

- `PolicyRouter` builds the same load view the gateway's membership does and calls the
  gateway's `CacheAwarePlacer` ("warmroute" keyed on the conversation id, "warmroute-keyless"
  without it; the prompt's chunks are the trace's full-block prefix ids and each engine's
  picture holds as many blocks as its cache), `policies.choose` ("warmroute-hash": stateless
  rendezvous on the key) or `policies.round_robin`, timing each decision. `slack=k` raises the
  in-flight cap to at least ⌈average⌉ + k (`--load-slack`);
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

from warmroute.gateway import features, policies
from warmroute.gateway.placement import CacheAwarePlacer, PlacementParams
from warmroute.gateway.policies import Decision, EngineLoad, RequestFeatures
from warmroute.gateway.prefix_index import PrefixIndex
from warmroute.sim.simulated_engine import SimulatedEngine
from warmroute.sim.textgen import BlockText
from warmroute.sim.traces import TraceRequest

AFFINITY_WORDS = 300  # more than the 1 KiB of the first user message the digest reads
POLICY_NAMES = ("warmroute", "warmroute-keyless", "warmroute-hash", "round-robin")


class Router(Protocol):
    """`decision_s`: seconds each placement took (the policy call, not the snapshot)."""

    name: str
    decision_s: list[float]
    snapshot_s: list[float]

    def place(self, request: TraceRequest, keys: Sequence[bytes],
              engines: Sequence[SimulatedEngine]) -> int: ...

    def placed(self, engine: int, keys: Sequence[bytes]) -> None: ...

    def first_token(self, engine: int, ticket: int) -> None:
        """The request of the `ticket`-th placement (counted from 0), on `engine`, produced its
        first token."""


class PolicyRouter:
    """warmroute's placement (cache-aware, keyed or keyless; or stateless hashing) or the
    round-robin floor, as the gateway runs it."""

    def __init__(self, name: str, engine_ids: Sequence[str], epsilon: float,
                 rng: random.Random, slack: int = 0, cache_blocks: int = 1000,
                 block_tokens: int = 512) -> None:
        if name not in POLICY_NAMES:
            raise ValueError(f"unknown policy {name!r}")
        self.name = name
        self.block_tokens = block_tokens
        self.ids = list(engine_ids)
        self.index = {engine_id: i for i, engine_id in enumerate(self.ids)}
        self.epsilon = epsilon
        self.slack = slack
        self.rng = rng
        self.turns = itertools.count()
        self.blocks = BlockText()
        # Each request ahead counts one 512-token block beyond its prompt: the simulated
        # engines prefill back to back (no decode step between two prefills).
        self.placer = CacheAwarePlacer(PlacementParams(epsilon, slack, request_work=1.0),
                                       PrefixIndex(max(1, cache_blocks)))
        self.decision_s: list[float] = []
        self.snapshot_s: list[float] = []  # building the load view, as membership does
        self.queued: dict[str, float] = {}  # prefill work whose first token is still to come
        self.placements = itertools.count()
        self.works: dict[int, tuple[str, float]] = {}  # placement → (engine, its work)

    def features(self, request: TraceRequest) -> RequestFeatures:
        full = request.hash_ids[: request.input_length // self.block_tokens]
        if self.name == "warmroute":
            return RequestFeatures(key=request.conv_id, chunks=full)
        if self.name == "warmroute-keyless":
            return RequestFeatures(chunks=full)
        if self.name == "warmroute-hash":
            return RequestFeatures(key=request.conv_id)
        return RequestFeatures(affinity=self.affinity(request))

    def affinity(self, request: TraceRequest) -> str | None:
        """The `hash` policy's keyless digest of the very messages the bench would send."""
        ids = request.hash_ids
        system = " ".join(self.blocks.block(ids[0])) if ids else ""
        user_words = min(AFFINITY_WORDS, max(0, request.input_length - self.blocks.block_tokens))
        user = " ".join(self.blocks.block(ids[1], user_words)) if len(ids) > 1 else "continue"
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return features.affinity_digest(messages)

    def place(self, request: TraceRequest, keys: Sequence[bytes],
              engines: Sequence[SimulatedEngine]) -> int:
        wanted = self.features(request)
        started = time.perf_counter()
        decision: Decision
        if self.name in ("warmroute", "warmroute-keyless"):
            loads = {self.ids[e.index]: e.in_flight for e in engines}
            decided = time.perf_counter()
            decision = self.placer.place(wanted, loads, self.queued)
        else:
            snapshot = tuple(EngineLoad(self.ids[e.index], e.in_flight) for e in engines)
            decided = time.perf_counter()
            if self.name == "round-robin":
                decision = policies.round_robin(next(self.turns), snapshot)
            else:
                decision = policies.choose(wanted, snapshot, self.epsilon, self.rng, self.slack)
        done = time.perf_counter()
        self.snapshot_s.append(decided - started)
        self.decision_s.append(done - decided)
        chosen = decision.engine_id
        self.queued[chosen] = self.queued.get(chosen, 0.0) + decision.work
        self.works[next(self.placements)] = (chosen, decision.work)
        return self.index[chosen]

    def placed(self, engine: int, keys: Sequence[bytes]) -> None:
        """The placer recorded its choice already; the other policies keep no state."""

    def first_token(self, engine: int, ticket: int) -> None:
        """That placement's prefill is done: its work no longer queues on its engine."""
        placed = self.works.pop(ticket, None)
        if placed is not None:
            engine_id, work = placed
            self.queued[engine_id] = max(0.0, self.queued[engine_id] - work)


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

    def first_token(self, engine: int, ticket: int) -> None:
        """The oracle reads the engines' state directly."""

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
