"""The gateway's view of its engines: which are healthy, and how many requests each has in flight.

State changes come from two places: the active prober (`health.py`) and the proxy's passive
ejections (connect errors, timeouts, 5xx). A probe that began before an engine's latest
ejection cannot re-admit it, so a probe racing a crash does not bring a dead engine back.
Listeners hear every change (metrics, logs). No I/O here; the clock is injected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from warmroute.config import EngineEndpoint
from warmroute.gateway.policies import EngineLoad

log = logging.getLogger(__name__)
# An engine that refused a `priority` is sent none for this long, then asked once more (vLLM
# says nothing of its policy, so only a refusal tells; an operator may restart it with
# `--scheduling-policy priority` meanwhile). One that was ejected and comes back is asked at once.
PRIORITY_RETRY_S = 300.0

Listener = Callable[[str, bool, str], None]
"""Called with (engine id, healthy now, cause) whenever an engine is ejected or admitted."""


@dataclass
class EngineState:
    endpoint: EngineEndpoint
    healthy: bool = False
    in_flight: int = 0
    queued: float = 0.0  # prefill work placed here whose first token has not come back yet
    waiting: int = 0  # of those, held in the gateway's admission gate (`admission.py`)
    probe_failures: int = 0
    ejected_at: float = float("-inf")
    model: str | None = None
    cache_chars: int | None = None  # about how much prompt text its prefix cache holds
    scheduling_policy: str | None = None  # as its latest health answer named it, if it did
    priority_refused_at: float | None = None  # when it last refused a ranked request

    @property
    def engine_id(self) -> str:
        return self.endpoint.engine_id


class Membership:
    def __init__(
        self,
        endpoints: Iterable[EngineEndpoint],
        failures_to_eject: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engines = {e.engine_id: EngineState(e, model=e.model) for e in endpoints}
        self.failures_to_eject = failures_to_eject
        self.clock = clock
        self.listeners: list[Listener] = []
        # Told of every first token (engine, the prefill work it ends), and of every prefill a
        # request takes to an engine it was not placed on (failover, resume; no placement
        # reserved it there): shared routing state passes both on to the other replicas.
        self.prefill_listeners: list[Callable[[str, float], None]] = []
        self.move_listeners: list[Callable[[str, float], None]] = []
        # The healthy engines' in-flight counts and queued prefill, kept as they change: every
        # request reads them, and making them afresh cost 82 us a request at 512 engines.
        self._loads: dict[str, int] = {}
        self._queued: dict[str, float] = {}

    def snapshot(self) -> tuple[EngineLoad, ...]:
        """The healthy engines and their in-flight counts, for a policy."""
        return tuple(
            EngineLoad(s.engine_id, s.in_flight) for s in self.engines.values() if s.healthy
        )

    def loads(self) -> Mapping[str, int]:
        """The healthy engines' in-flight counts, for the cache-aware placer: kept up to date
        as requests come and go, never to be changed by the reader (copy it to keep it)."""
        return self._loads

    def queued(self) -> Mapping[str, float]:
        """The healthy engines' outstanding prefill work, for the cache-aware placer (kept
        up to date, like `loads`)."""
        return self._queued

    def healthy_ids(self) -> list[str]:
        return [s.engine_id for s in self.engines.values() if s.healthy]

    def url(self, engine_id: str) -> str:
        return self.engines[engine_id].endpoint.url

    def acquire(self, engine_id: str, work: float = 0.0, moved: bool = False) -> None:
        """A request is at the engine, its prefill `work` queued there until its first token;
        `moved`: it was placed on another engine (a failover, a resumed stream)."""
        state = self.engines[engine_id]
        state.in_flight += 1
        state.queued += work
        if state.healthy:
            self._loads[engine_id] = state.in_flight
            self._queued[engine_id] = state.queued
        if moved and work:
            for listener in self.move_listeners:
                listener(engine_id, work)

    def prefilled(self, engine_id: str, work: float) -> None:
        """A request's first token came back (or it ended): its prefill is off the queue."""
        state = self.engines[engine_id]
        state.queued = max(0.0, state.queued - work)
        if state.healthy:
            self._queued[engine_id] = state.queued
        for listener in self.prefill_listeners:
            listener(engine_id, work)

    def release(self, engine_id: str, work: float = 0.0) -> None:
        """A request ended; `work`: its prefill, if still counted (it never got a token)."""
        state = self.engines[engine_id]
        state.in_flight = max(0, state.in_flight - 1)
        if state.healthy:
            self._loads[engine_id] = state.in_flight
        if work:
            self.prefilled(engine_id, work)

    def takes_priority(self, engine_id: str) -> bool:
        """Whether the engine is sent a `priority` (under `engine_priority`): not when its
        health answer says it schedules `fcfs`, nor for `PRIORITY_RETRY_S` after it refused
        one; an engine that says nothing is trusted to, as its operator set."""
        state = self.engines[engine_id]
        if state.scheduling_policy == "fcfs":
            return False
        refused = state.priority_refused_at
        return refused is None or self.clock() - refused >= PRIORITY_RETRY_S

    def refused_priority(self, engine_id: str) -> None:
        """The engine answered a ranked request with a refusal of its `priority`."""
        self.engines[engine_id].priority_refused_at = self.clock()

    def eject(self, engine_id: str, cause: str) -> None:
        """Passive ejection: the engine failed a request. It returns when a probe succeeds."""
        state = self.engines[engine_id]
        state.ejected_at = self.clock()
        if state.healthy:
            state.healthy = False
            self._notify(state, cause)

    def probe_succeeded(self, engine_id: str, started_at: float, model: str | None,
                        cache_chars: int | None = None,
                        scheduling_policy: str | None = None) -> None:
        state = self.engines[engine_id]
        state.probe_failures = 0
        if cache_chars is not None:
            state.cache_chars = cache_chars
        state.scheduling_policy = scheduling_policy
        if model and not state.endpoint.model:
            state.model = model
        if not state.healthy and started_at > state.ejected_at:
            state.healthy = True
            state.priority_refused_at = None  # it may have come back with another policy
            self._notify(state, "probe")

    def probe_failed(self, engine_id: str, cause: str) -> None:
        state = self.engines[engine_id]
        state.probe_failures += 1
        if state.healthy and state.probe_failures >= self.failures_to_eject:
            self.eject(engine_id, cause)

    def _notify(self, state: EngineState, cause: str) -> None:
        healthy = [s for s in self.engines.values() if s.healthy]  # in the engines' order
        self._loads = {s.engine_id: s.in_flight for s in healthy}
        self._queued = {s.engine_id: s.queued for s in healthy}
        verb = "admitted" if state.healthy else "ejected"
        log.info("engine %s (%s) %s: %s", state.engine_id, state.endpoint.shown_url, verb, cause)
        for listener in self.listeners:
            listener(state.engine_id, state.healthy, cause)
