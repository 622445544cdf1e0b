"""Metering a request: rate limits before it, cost and a ledger row after it.

One row per finished request (streamed ones too, and ones cut off after they started) goes to
the store's usage ledger, committed before the answer's last bytes are sent, so a gateway
killed afterwards loses no row of a request whose answer was complete.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping

from warmroute.gateway.auth import Caller
from warmroute.gateway.ratelimit import RateLimiter
from warmroute.pricing import ModelPrice, price_for
from warmroute.store import Store, UsageRecord
from warmroute.types import Usage


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
        """Write the ledger row and count the tokens against the key's limit; returns the cost."""
        cost = self.cost(model, usage)
        await self.store().usage.record(
            UsageRecord(
                id=str(uuid.uuid4()),
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
        )
        await self.limiter.add_tokens(caller.key_id, caller.tpm, usage.total_tokens)
        return cost
