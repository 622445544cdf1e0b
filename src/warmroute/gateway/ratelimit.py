"""Requests and tokens per minute per API key, in fixed one-minute windows.

`check` runs before a request (both limits); `add_tokens` after it, with every token it used
(cached ones count, as xAI counts them). In-process by default; with a Redis URL the counters
live in Redis (INCR/INCRBY with an expiry), so gateway replicas share one limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from warmroute.errors import RateLimited

WINDOW_S = 60


class Counters(Protocol):
    async def incr(self, name: str, amount: int, expire_s: int) -> int: ...
    async def get(self, name: str) -> int: ...
    async def close(self) -> None: ...


class LocalCounters:
    """Counters in this process; old windows are dropped as new ones start."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.values: dict[str, tuple[float, int]] = {}
        self.clock = clock

    async def incr(self, name: str, amount: int, expire_s: int) -> int:
        now = self.clock()
        self.values = {k: v for k, v in self.values.items() if v[0] > now}
        expires, value = self.values.get(name, (now + expire_s, 0))
        self.values[name] = (expires, value + amount)
        return value + amount

    async def get(self, name: str) -> int:
        entry = self.values.get(name)
        return entry[1] if entry and entry[0] > self.clock() else 0

    async def close(self) -> None:
        self.values.clear()


class RedisCounters:
    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self.client: Any = redis.from_url(url)

    async def incr(self, name: str, amount: int, expire_s: int) -> int:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incrby(name, amount)
            pipe.expire(name, expire_s, nx=True)
            value, _ = await pipe.execute()
        return int(value)

    async def get(self, name: str) -> int:
        value = await self.client.get(name)
        return int(value) if value is not None else 0

    async def close(self) -> None:
        await self.client.aclose()


class RateLimiter:
    def __init__(self, counters: Counters, clock: Callable[[], float] = time.time) -> None:
        self.counters = counters
        self.clock = clock

    def _window(self) -> tuple[int, float]:
        now = self.clock()
        window = int(now // WINDOW_S)
        return window, (window + 1) * WINDOW_S - now

    async def check(self, key_id: str, rpm: int | None, tpm: int | None) -> None:
        """Count this request; `RateLimited` (with seconds to wait) when over either limit."""
        if rpm is None and tpm is None:
            return
        window, left = self._window()
        if tpm is not None:
            used = await self.counters.get(f"wr:tpm:{key_id}:{window}")
            if used >= tpm:
                raise RateLimited(
                    f"Too many tokens for API key {key_id}: {used}/{tpm} tokens per minute.",
                    retry_after=left,
                )
        if rpm is not None:
            count = await self.counters.incr(f"wr:rpm:{key_id}:{window}", 1, WINDOW_S * 2)
            if count > rpm:
                raise RateLimited(
                    f"Too many requests for API key {key_id}: {count}/{rpm} requests per minute.",
                    retry_after=left,
                )

    async def add_tokens(self, key_id: str, tpm: int | None, tokens: int) -> None:
        if tpm is None or tokens <= 0:
            return
        window, _ = self._window()
        await self.counters.incr(f"wr:tpm:{key_id}:{window}", tokens, WINDOW_S * 2)


def make_rate_limiter(redis_url: str | None) -> RateLimiter:
    return RateLimiter(RedisCounters(redis_url) if redis_url else LocalCounters())
