"""Metering a request: rate limits before it, cost and a ledger row after it.

One row per finished request (streamed ones too, and ones cut off after they started) goes to
the store's usage ledger, committed before the answer's last bytes are sent, so a gateway
killed afterwards loses no row of a request whose answer was complete. Inside `held_charges`
(a deferred run) rows are held instead, to be written with the run's result in one transaction
(`gateway/deferred.py`), and their tokens counted by `settle` once they are.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from warmroute.gateway.auth import Caller
from warmroute.gateway.ratelimit import RateLimiter
from warmroute.gateway.shielded import shielded
from warmroute.pricing import ModelPrice, price_for
from warmroute.store import Store, UsageRecord
from warmroute.types import Usage


@dataclass(frozen=True)
class Charge:
    """A ledger row not yet written, and the tokens to count against its key's limit."""

    row: UsageRecord
    key_id: str
    tpm: int | None
    tokens: int


_ids = random.Random()  # seeded from the OS once: unique row ids without a syscall per row


UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version and variant bits
UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def row_id() -> str:
    """A random (version 4) UUID for a ledger row, as `str(uuid.uuid4())` writes it (without
    building a `uuid.UUID`: one per answer)."""
    h = "%032x" % (_ids.getrandbits(128) & UUID4_CLEAR | UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# The charges of the deferred run this task belongs to (a context variable: each run's tasks
# see their own list, nothing else sees one).
HELD: ContextVar[list[Charge] | None] = ContextVar("warmroute_held_charges", default=None)


@contextlib.contextmanager
def held_charges() -> Iterator[list[Charge]]:
    """Within the block (and tasks it starts), `Meter.record` holds its rows in the list."""
    held: list[Charge] = []
    token = HELD.set(held)
    try:
        yield held
    finally:
        HELD.reset(token)


class Meter:
    def __init__(
        self,
        store: Callable[[], Store],
        prices: Mapping[str, ModelPrice],
        limiter: RateLimiter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.prices = prices
        self.limiter = limiter
        self.clock = clock

    async def admit(self, caller: Caller) -> None:
        await self.limiter.check(caller.key_id, caller.rpm, caller.tpm)

    def cost(self, model: str, usage: Usage) -> int:
        return price_for(self.prices, model).cost_in_usd_ticks(usage)

    async def record(
        self, caller: Caller, surface: str, model: str, engine_id: str | None, usage: Usage
    ) -> int:
        """Write the ledger row and count the tokens against the key's limit (inside
        `held_charges`: hold both); returns the cost."""
        cost = self.cost(model, usage)
        row = UsageRecord(
            id=row_id(),
            time=self.clock(),
            key_id=None if caller.anonymous else caller.key_id,
            team=caller.team,
            model=model,
            engine_id=engine_id,
            surface=surface,
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=min(usage.cached_tokens, usage.prompt_tokens),
            completion_tokens=usage.completion_tokens,
            cost_in_usd_ticks=cost,
        )
        charge = Charge(row, caller.key_id, caller.tpm, usage.total_tokens)
        held = HELD.get()
        if held is not None:
            held.append(charge)
            return cost
        await self.store().usage.record(row)
        await self.settle([charge])
        return cost

    async def record_shielded(
        self, caller: Caller, surface: str, model: str, engine_id: str | None, usage: Usage
    ) -> int:
        """`record`, finished however the caller is cancelled meanwhile: a stream's row,
        written while its client may leave (a cancellation that lands inside `record` would
        lose the row). Where nothing in it waits (the SQLite ledger's journal and local
        limits) no cancellation can land in it, and it runs as it is; else in a task of its
        own (`shielded`: ~12 µs)."""
        if self.limiter.counters.at_once and self.store().usage.records_at_once:
            return await self.record(caller, surface, model, engine_id, usage)
        return await shielded(self.record(caller, surface, model, engine_id, usage))

    async def settle(self, charges: list[Charge]) -> None:
        """Count written charges' tokens against their keys' limits."""
        for charge in charges:
            await self.limiter.add_tokens(charge.key_id, charge.tpm, charge.tokens)
