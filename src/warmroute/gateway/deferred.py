"""Deferred completions, shared by the REST surface (`deferred: true` on Chat Completions) and
gRPC (`StartDeferredCompletion`): a PENDING entry in the store, the work run in the background,
its result (or its failure, described by the surface) stored for its owner to read back.

Each surface keeps its own result shape (a Chat Completions answer, a response proto as a
dict); `surface_of` tells them apart, so a surface never misreads the other's result.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from warmroute.errors import NotFound, WarmrouteError
from warmroute.store import DeferredCompletion, Store

log = logging.getLogger(__name__)
DEFERRED_TTL_S = 24 * 3600.0
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
    failure into what is stored for it (the surfaces' wire error mapping)."""

    def __init__(
        self,
        store: Callable[[], Store],
        describe: Callable[[WarmrouteError], Json],
        ttl_s: float = DEFERRED_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.describe = describe
        self.ttl_s = ttl_s
        self.clock = clock
        self.background: set[asyncio.Task[None]] = set()

    async def start(self, owner: str, work: Callable[[], Awaitable[Json]]) -> str:
        request_id = str(uuid.uuid4())
        now = self.clock()
        await self.store().deferred.create(request_id, owner, now, now + self.ttl_s)
        task = asyncio.create_task(self._run(request_id, work))
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return request_id

    async def _run(self, request_id: str, work: Callable[[], Awaitable[Json]]) -> None:
        try:
            result = await work()
        except DeferredFailed as exc:
            await self.store().deferred.fail(request_id, exc.failure)
            return
        except WarmrouteError as exc:
            await self.store().deferred.fail(request_id, self.describe(exc))
            return
        except Exception:  # the entry must not stay PENDING for a day: record it, then log
            log.exception("deferred request %s failed", request_id)
            await self.store().deferred.fail(
                request_id, self.describe(WarmrouteError("the deferred request failed"))
            )
            return
        await self.store().deferred.complete(request_id, result)

    async def get(self, request_id: str, owner: str) -> DeferredCompletion:
        found = await self.store().deferred.get(request_id, owner, self.clock())
        if found is None:
            raise NotFound(f"Deferred request {request_id!r} was not found")
        return found

    async def stop(self) -> None:
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
