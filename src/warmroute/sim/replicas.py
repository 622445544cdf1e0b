"""Gateway replicas in the simulation: N copies of warmroute's placer behind a round-robin load
balancer, sharing routing state the way `gateway/shared_state.py` shares it through Redis.

- Request i goes to replica i mod N, which places it with its own `CacheAwarePlacer`.
- Conversation homes live in one registry (Redis' home keys): a replica that does not know a
  conversation's home looks it up (a round trip, modelled as instant), and a new or moved home
  is claimed there atomically (the first claim wins; a losing replica sends the request to the
  winner's home and adopts it).
- Every placement (engine, chunk digests, and the home it set) reaches the other replicas
  `lag_s` of simulated time later (the routing log), and only then feeds their prefix pictures
  and served counts.
- Prefill work queued ahead is reserved in one registry at once (the gateway's atomic Redis
  reservation: every new placement takes the candidate with the least work every replica
  reserved), so replicas placing a burst together do not herd onto one engine. In-flight
  counts are the engines', which the load caps compare to their average, so a replica's own
  share (about 1/N of each) would give the same caps but for the slack.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Hashable, Sequence

from warmroute.sim.routers import PolicyRouter
from warmroute.sim.simulated_engine import SimulatedEngine
from warmroute.sim.traces import TraceRequest

# (due, origin, engine, chunks, conversation, its new home)
Event = tuple[float, int, str, tuple[Hashable, ...], str | None, str | None]


class ReplicatedRouter:
    def __init__(self, engine_ids: Sequence[str], epsilon: float, seed: int, replicas: int,
                 lag_s: float, time_scale: float, slack: int = 0,
                 cache_blocks: int = 1000) -> None:
        if replicas < 1 or lag_s < 0:
            raise ValueError("replicas must be at least 1 and the lag not negative")
        self.name = f"warmroute ×{replicas} gw, lag {lag_s * 1000:g} ms"
        self.replicas = [
            PolicyRouter("warmroute", engine_ids, epsilon, random.Random(seed + r), slack,
                         cache_blocks) for r in range(replicas)
        ]
        self.ids = list(engine_ids)
        self.lag_s = lag_s
        self.time_scale = time_scale
        self.homes: dict[str, str] = {}  # the shared registry: conversation → home
        self.inbox: deque[Event] = deque()
        self.turns = itertools.count()
        # placement → (the replica that placed it, its number among that replica's placements)
        self.placed_by: dict[int, tuple[int, int]] = {}
        self.counted: list[int] = [0] * replicas
        self.now = 0.0
        reserved = self.replicas[0].queued  # one registry of reserved prefill for all
        for router in self.replicas:
            router.queued = reserved

    @property
    def decision_s(self) -> list[float]:
        return [s for r in self.replicas for s in r.decision_s]

    @property
    def snapshot_s(self) -> list[float]:
        return [s for r in self.replicas for s in r.snapshot_s]

    def place(self, request: TraceRequest, keys: Sequence[bytes],
              engines: Sequence[SimulatedEngine]) -> int:
        now = request.timestamp_ms / 1000.0 * self.time_scale
        self._deliver(now)
        ticket = next(self.turns)  # this placement's number, as the simulation counts them
        origin = ticket % len(self.replicas)
        router = self.replicas[origin]
        placer, key = router.placer, request.conv_id
        before = placer.home_of(key)
        if before is None and key in self.homes:  # a lookup
            before = self.homes[key]
            placer.adopt_home("", key, before)
        index = router.place(request, keys, engines)
        after = placer.home_of(key)
        if after is not None and after != before:
            holder = self._claim(key, after, before)
            if holder != after:
                placer.adopt_home("", key, holder)
                index = self.ids.index(holder)
        chunks = router.features(request).chunks
        self.inbox.append((now + self.lag_s, origin, self.ids[index], chunks, key,
                           self.homes.get(key) if after != before else None))
        self.placed_by[ticket] = (origin, self.counted[origin])
        self.counted[origin] += 1
        self.now = now
        return index

    def _claim(self, key: str, engine_id: str, previous: str | None) -> str:
        current = self.homes.get(key)
        if current is None or current == previous:
            self.homes[key] = engine_id
        return self.homes[key]

    def _deliver(self, now: float) -> None:
        while self.inbox and self.inbox[0][0] <= now:
            _, origin, engine_id, chunks, key, home = self.inbox.popleft()
            for r, router in enumerate(self.replicas):
                if r == origin:
                    continue
                router.placer.observe(engine_id, chunks)
                if key is not None and home is not None:
                    router.placer.adopt_home("", key, home)

    def placed(self, engine: int, keys: Sequence[bytes]) -> None:
        """The replica's placer recorded its choice already."""

    def first_token(self, engine: int, ticket: int) -> None:
        placed = self.placed_by.pop(ticket, None)
        if placed is not None:
            origin, own_ticket = placed
            self.replicas[origin].first_token(engine, own_ticket)
