"""Deferred completions, shared by the REST surface (`deferred: true` on Chat Completions) and
gRPC (`StartDeferredCompletion`): a PENDING entry in the store, the work run in the background,
its result (or its failure, described by the surface) stored for its owner to read back.

Each surface keeps its own result shape (a Chat Completions answer, a response proto as a
dict); `surface_of` tells them apart, so a surface never misreads the other's result.

Bounded (issue 13): at most `max_pending` entries PENDING in the store and `max_per_owner` per
team (beyond: 429); a run's charge is held while it runs and written with its result in one
transaction (`held_charges`), so the ledger and the results agree however the gateway stops.
Each gateway is a runner renewing its PENDING entries' heartbeat every `HEARTBEAT_S`; an entry
whose heartbeat is `STALE_AFTER_S` old (its gateway was killed) is failed by any gateway
sharing the store, at start and every `SWEEP_S`: nothing stays PENDING more than
`STALE_AFTER_S + SWEEP_S` after its gateway died. A gateway that stops fails its own. (The
sweep is an UPDATE through the async store: ~1.3 ms of the event loop's time, measured here,
that every request in flight waits for; every third beat, not every beat, per replica.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from warmroute.errors import NotFound, RateLimited, RunInterrupted, WarmrouteError
from warmroute.gateway.metering import Charge, Meter, held_charges
from warmroute.store import DeferredCompletion, Store

log = logging.getLogger(__name__)
DEFERRED_TTL_S = 24 * 3600.0
HEARTBEAT_S = 2.0
STALE_AFTER_S = 10.0
SWEEP_BEATS = 3  # beats between sweeps for stale entries
SWEEP_S = HEARTBEAT_S * SWEEP_BEATS
MAX_RUN_S = 900.0
REST_OBJECT = "chat.completion"
Json = dict[str, Any]


class DeferredFailed(WarmrouteError):
    """Work that ended with an answer that is a failure, stored as `failure` as it is."""

    def __init__(self, message: str, failure: Json) -> None:
        super().__init__(message)
        self.failure = failure


def surface_of(result: Json) -> str:
    """`"rest"` for a Chat Completions answer, else `"grpc"` (a response proto as a dict)."""
    return "rest" if result.get("object") == REST_OBJECT else "grpc"


class DeferredRuns:
    """`start` stores a PENDING entry and runs `work` in the background; `get` reads an entry
    back for its owner (`NotFound` for an unknown id or another owner's). `describe` turns a
    failure into what is stored for it (the surfaces' wire error mapping). `open` (once the
    store is open) fails stale entries and starts the heartbeat; `stop` ends both."""

    def __init__(
        self,
        store: Callable[[], Store],
        describe: Callable[[WarmrouteError], Json],
        ttl_s: float = DEFERRED_TTL_S,
        clock: Callable[[], float] = time.time,
        meter: Meter | None = None,
        limits: tuple[int, int] = (1000, 100),
    ) -> None:
        """`limits`: entries PENDING at once in all, and per owner."""
        self.store = store
        self.describe = describe
        self.ttl_s = ttl_s
        self.clock = clock
        self.meter = meter
        self.max_pending, self.max_per_owner = limits
        self.runner = str(uuid.uuid4())
        self.background: set[asyncio.Task[None]] = set()
        self.unsettled: set[str] = set()  # ended, but their entry could not be written yet
        self._beat: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self.fail_stale()
        self._beat = asyncio.create_task(self._keep_alive(), name="warmroute-deferred-beat")

    async def start(self, owner: str, work: Callable[[], Awaitable[Json]]) -> str:
        await self.check_room(owner)
        request_id = str(uuid.uuid4())
        now = self.clock()
        await self.store().deferred.create(request_id, owner, now, now + self.ttl_s,
                                           self.runner)
        task = asyncio.create_task(self._run(request_id, work))
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return request_id

    async def check_room(self, owner: str) -> None:
        pending = self.store().deferred
        if await pending.pending(owner) >= self.max_per_owner:
            raise RateLimited(f"this team already has {self.max_per_owner} deferred requests "
                              "pending; retry when one has finished", retry_after=5.0)
        if await pending.pending() >= self.max_pending:
            raise RateLimited(f"{self.max_pending} deferred requests are pending; retry when "
                              "one has finished", retry_after=5.0)

    async def _run(self, request_id: str, work: Callable[[], Awaitable[Json]]) -> None:
        settled = False
        try:
            settled = await self._settle(request_id, *await self._attempt(work))
        finally:
            if not settled:
                self.unsettled.add(request_id)

    async def _attempt(self, work: Callable[[], Awaitable[Json]]
                       ) -> tuple[Json | None, Json | None, list[Charge]]:
        """The work's result and held charges, or what to store for its failure."""
        with held_charges() as charges:
            try:
                async with asyncio.timeout(MAX_RUN_S):
                    return await work(), None, list(charges)
            except DeferredFailed as exc:
                return None, exc.failure, []
            except WarmrouteError as exc:
                return None, self.describe(exc), []
            except TimeoutError:
                return None, self.describe(RunInterrupted(
                    f"the deferred request ran longer than {MAX_RUN_S:g} s")), []
            except Exception:  # the entry must not stay PENDING for a day: record it, then log
                log.exception("deferred request failed")
                return None, self.describe(WarmrouteError("the deferred request failed")), []

    async def _settle(self, request_id: str, result: Json | None, failure: Json | None,
                      charges: list[Charge]) -> bool:
        """Write the entry's end (the result with its charges, or the failure); whether it was
        written (a store that fails leaves it to the heartbeat's retries)."""
        try:
            if result is None:
                await self.store().deferred.fail(request_id, failure or {})
                return True
            rows = [charge.row for charge in charges]
            written = await self.store().deferred.complete(request_id, result, rows)
            if written and self.meter is not None:
                await self.meter.settle(charges)
            return True
        except WarmrouteError as exc:
            log.warning("deferred request %s: its end could not be stored: %s", request_id,
                        exc.message)
            return False

    async def get(self, request_id: str, owner: str) -> DeferredCompletion:
        found = await self.store().deferred.get(request_id, owner, self.clock())
        if found is None:
            raise NotFound(f"Deferred request {request_id!r} was not found")
        return found

    def interrupted(self) -> Json:
        return self.describe(RunInterrupted(
            "the gateway running this deferred request stopped before it finished; start it "
            "again"))

    async def fail_stale(self) -> int:
        failed = await self.store().deferred.fail_stale(self.clock() - STALE_AFTER_S,
                                                        self.interrupted())
        if failed:
            log.warning("%d deferred requests of stopped gateways marked FAILED", failed)
        return failed

    async def _keep_alive(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            beats += 1
            try:
                if self.background:
                    await self.store().deferred.heartbeat(self.runner, self.clock())
                for request_id in list(self.unsettled):
                    await self.store().deferred.fail(request_id, self.interrupted())
                    self.unsettled.discard(request_id)
                if beats % SWEEP_BEATS == 0:
                    await self.fail_stale()
            except WarmrouteError as exc:  # the store is down: try again at the next beat
                log.warning("deferred heartbeat: %s", exc.message)

    async def stop(self) -> None:
        """Cancel the runs, then fail this runner's entries still PENDING (best effort)."""
        if self._beat is not None:
            self._beat.cancel()
            await asyncio.gather(self._beat, return_exceptions=True)
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        with contextlib.suppress(WarmrouteError):
            await self.store().deferred.fail_runner(self.runner, self.interrupted())
