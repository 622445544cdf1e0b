"""Requests and tokens per minute per API key, in fixed one-minute windows.

`check` runs before a request (both limits); `add_tokens` after it, with every token it used
(cached ones count, as xAI counts them). In-process by default; with a Redis URL the counters
live in Redis (INCR/INCRBY with an expiry), so gateway replicas share one limit. When Redis
cannot be reached (within `REDIS_TIMEOUT_S`), limits fail open to this process's own counters:
no request fails for it, each replica then enforces the limits on what it sees alone, and the
shared counters are used again as soon as Redis answers (README, "Limits and failures").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from warmroute.errors import RateLimited

log = logging.getLogger(__name__)
WINDOW_S = 60
REDIS_TIMEOUT_S = 0.5
REDIS_RETRY_S = 2.0  # after a failure, requests count locally this long before Redis is tried


class Counters(Protocol):
    at_once: bool  # whether counting waits on nothing (no await suspends)

    async def incr(self, name: str, amount: int, expire_s: int) -> int: ...
    async def get(self, name: str) -> int: ...
    async def close(self) -> None: ...


class LocalCounters:
    """Counters in this process; old windows are dropped as new ones start."""

    at_once = True

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
    """Counters in Redis, falling back to `LocalCounters` while Redis fails (fail open)."""

    at_once = False

    def __init__(self, url: str, clock: Callable[[], float] = time.time) -> None:
        import redis.asyncio as redis

        self.client: Any = redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                          socket_connect_timeout=REDIS_TIMEOUT_S)
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.fallback = LocalCounters(clock)
        self.clock = clock
        self.failing = False
        self.retry_at = 0.0

    async def incr(self, name: str, amount: int, expire_s: int) -> int:
        async def shared() -> int:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.incrby(name, amount)
                pipe.expire(name, expire_s, nx=True)
                value, _ = await pipe.execute()
            return int(value)

        return await self._or_local(shared, lambda: self.fallback.incr(name, amount, expire_s))

    async def get(self, name: str) -> int:
        async def shared() -> int:
            value = await self.client.get(name)
            return int(value) if value is not None else 0

        return await self._or_local(shared, lambda: self.fallback.get(name))

    async def _or_local(self, shared: Callable[[], Awaitable[int]],
                        local: Callable[[], Awaitable[int]]) -> int:
        if self.failing and self.clock() < self.retry_at:
            return await local()  # no request waits for a Redis that just failed
        try:
            value = await shared()
        except self.errors as exc:
            if not self.failing:
                log.warning("rate limits: Redis unavailable (%s); counting in this process",
                            type(exc).__name__)
            self.failing, self.retry_at = True, self.clock() + REDIS_RETRY_S
            return await local()
        if self.failing:
            log.info("rate limits: Redis answers again; shared counters in use")
            self.failing = False
        return value

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
