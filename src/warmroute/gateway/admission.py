"""Admission to a saturated engine: the least prefill first, not the first come.

An engine prefills the requests it holds one after another, in arrival order (vLLM's default
scheduler, SGLang's and ours alike). When it is saturated, a conversation's next turn — a few
hundred new tokens over a cached history — waits behind every new conversation's long prompt
that came a moment before it. So this gateway keeps at most `max_work` chunks of prefill
(`policies.RequestFeatures` chunks, ~50–64 tokens each, as placement counts them) sent to an
engine and not yet answered with a first token; a request placed on an engine past that
waits here, and the waiting ones go in order of `arrival + ms_per_chunk·work`: the
shortest prefill first, and a long one overtaken only by what came within `ms_per_chunk`
times its extra work after it (a 40k-token prompt: by what came within ~7 s at the default).
Nobody waits more than `max_hold_s`: past that a request goes to its engine as before.

The work sent is read off the membership: a request counts there from its placement to its
first token (`Membership.acquire` … `prefilled`), held ones included, so the gate subtracts
what it holds and what was sent without a stream (a JSON answer's first token is never seen:
its prompt counts until its end, which would hold streams behind a long JSON decode; it goes
in its turn and then counts for placement only). Only a request's placement passes here;
failovers and resumes go at once. The membership tells the gate of every prefill done
(`prefill_listeners`) and of every engine lost (its waiters go on: `admit` says they waited,
and the proxy moves one whose engine is gone to the next). Several replicas each keep their
own `max_work` at an engine.

Holding costs something: a request let go after its engine's first token still has to reach
the engine and be tokenized there, which it would have done while queued. With a budget of
64 chunks that cost the conversation trace's moderate load (8 engines, 3× speed) about 3 % of
TTFT p50; at 128 it is within noise, and most of the gain under saturation stays (README,
"Admission", for the figures).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from warmroute.gateway.membership import Membership

DEFAULT_MAX_WORK = 128.0  # chunks: ~8k tokens sent and not yet prefilled, per engine
DEFAULT_MS_PER_CHUNK = 10.0
DEFAULT_MAX_HOLD_S = 5.0


@dataclass(frozen=True)
class AdmissionParams:
    """`max_work` 0 turns the gate off."""

    max_work: float = DEFAULT_MAX_WORK
    ms_per_chunk: float = DEFAULT_MS_PER_CHUNK
    max_hold_s: float = DEFAULT_MAX_HOLD_S

    def __post_init__(self) -> None:
        if min(self.max_work, self.ms_per_chunk, self.max_hold_s) < 0:
            raise ValueError("admission settings must not be negative")


@dataclass(order=True)
class _Waiter:
    priority: float
    seq: int
    work: float = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


@dataclass
class _Lane:
    """One engine's waiting requests, and the work of those held or sent without a stream."""

    heap: list[_Waiter] = field(default_factory=list)
    held: float = 0.0
    unseen: float = 0.0  # JSON answers' prompts: counted by the membership until their end


class AdmissionGate:
    def __init__(self, membership: Membership, params: AdmissionParams | None = None,
                 observe_wait: Callable[[float], None] | None = None) -> None:
        self.membership = membership
        self.params = params or AdmissionParams()
        self.observe_wait = observe_wait
        self._lanes: dict[str, _Lane] = {}
        self._order = itertools.count()
        membership.prefill_listeners.append(self._prefill_done)
        membership.listeners.append(self._membership_changed)

    def waiting(self, engine_id: str) -> int:
        """Requests placed on the engine and held here (`EngineState.waiting`)."""
        state = self.membership.engines.get(engine_id)
        return state.waiting if state is not None else 0

    async def admit(self, engine_id: str, work: float) -> bool:
        """Return when the request (placed on `engine_id`, its `work` acquired there) may go:
        at once (False) unless its engine has `max_work` sent already or others wait for it;
        True once it waited (its engine may have been lost meanwhile)."""
        if self.params.max_work <= 0:
            return False
        lane = self._lanes.get(engine_id)
        if lane is None:
            lane = self._lanes[engine_id] = _Lane()
        if not lane.heap and self._open(engine_id, lane, work):
            return False
        await self._wait(engine_id, lane, work)
        return True

    def json_sent(self, engine_id: str, work: float) -> None:
        """A JSON answer's prompt goes to the engine (placed, or moved there past the gate): its
        first token is never seen, so it counts as sent no longer, and the next may go."""
        if self.params.max_work <= 0 or not work:
            return
        lane = self._lanes.get(engine_id)
        if lane is None:
            lane = self._lanes[engine_id] = _Lane()
        lane.unseen += work
        if lane.heap:
            self._release(engine_id, lane)

    def json_done(self, engine_id: str, work: float) -> None:
        """A JSON answer's engine is done with it (its `work` leaves the membership too)."""
        lane = self._lanes.get(engine_id)
        if lane is not None and work:
            lane.unseen = max(0.0, lane.unseen - work)

    def _open(self, engine_id: str, lane: _Lane, work: float = 0.0) -> bool:
        """Whether one more may go: the work sent there (less `work`, this request's own,
        already acquired) is under `max_work`, or nothing is sent at all."""
        state = self.membership.engines.get(engine_id)
        if state is None or not state.healthy:
            return True
        sent = state.queued - work - lane.held - lane.unseen
        return sent < self.params.max_work or sent <= 1e-9

    async def _wait(self, engine_id: str, lane: _Lane, work: float) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiter = _Waiter(started + self.params.ms_per_chunk * work / 1000.0, next(self._order),
                         work, loop.create_future())
        heapq.heappush(lane.heap, waiter)
        lane.held += work
        state = self.membership.engines[engine_id]
        state.waiting += 1
        try:
            async with asyncio.timeout(self.params.max_hold_s):
                await waiter.future
        except TimeoutError:
            pass  # held long enough: it goes now
        finally:
            state.waiting -= 1
            lane.held = max(0.0, lane.held - waiter.work)  # 0 once let go
            waiter.work = 0.0
            if not waiter.future.done():
                waiter.future.cancel()  # lazily dropped from the heap
            if self.observe_wait is not None:
                self.observe_wait(loop.time() - started)

    def _release(self, engine_id: str, lane: _Lane) -> None:
        """Let the waiting go, least work first, while the engine has room (each one let go
        counts as sent at once, though its task runs later)."""
        heap = lane.heap
        while heap:
            head = heap[0]
            if head.future.done():
                heapq.heappop(heap)
                continue
            if not self._open(engine_id, lane):
                return
            heapq.heappop(heap)
            lane.held = max(0.0, lane.held - head.work)  # sent from now on, not held
            head.work = 0.0
            head.future.set_result(None)

    def _prefill_done(self, engine_id: str, work: float) -> None:
        lane = self._lanes.get(engine_id)
        if lane is not None and lane.heap:
            self._release(engine_id, lane)

    def _membership_changed(self, engine_id: str, healthy: bool, cause: str) -> None:
        """An engine lost lets everyone waiting for it go (to fail over elsewhere)."""
        lane = self._lanes.get(engine_id)
        if lane is not None and not healthy:
            for waiter in lane.heap:
                waiter.work = 0.0
                if not waiter.future.done():
                    waiter.future.set_result(None)
            lane.heap.clear()
            lane.held = 0.0
