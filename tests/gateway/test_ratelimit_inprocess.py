"""Per-key rate limits with local counters: the limiter on a fake clock (exact windows, exact
seconds to wait, tokens counted as used), and through the in-process gateway over a scripted
engine (429 with xAI's envelope and `retry-after`; a request's tokens, from its usage, count
against the key's tokens per minute)."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.inprocess import FakeClock, bearer, in_process_gateway, make_keys
from tests.gateway.scripted import ScriptedFleet
from warmroute.errors import RateLimited
from warmroute.gateway.ratelimit import WINDOW_S, LocalCounters, RateLimiter

EXHAUSTED = "Some resource has been exhausted"
BODY: dict[str, Any] = {"model": "scripted-model", "max_tokens": 50,
                        "messages": [{"role": "user", "content": "hi"}]}


def limiter(clock: FakeClock) -> RateLimiter:
    return RateLimiter(LocalCounters(clock), clock)


async def test_requests_per_minute_in_fixed_windows() -> None:
    clock = FakeClock(2 * WINDOW_S + 15.0)  # 45 s before the next window
    limits = limiter(clock)
    await limits.check("k", rpm=2, tpm=None)
    await limits.check("k", rpm=2, tpm=None)
    with pytest.raises(RateLimited) as refused:
        await limits.check("k", rpm=2, tpm=None)
    assert refused.value.retry_after == 45.0
    assert refused.value.message == "Too many requests for API key k: 3/2 requests per minute."
    await limits.check("other", rpm=2, tpm=None)  # limits are per key
    clock.advance(44.5)
    with pytest.raises(RateLimited) as still:
        await limits.check("k", rpm=2, tpm=None)
    assert still.value.retry_after == 0.5
    clock.advance(0.5)  # a new window
    await limits.check("k", rpm=2, tpm=None)
    counters = limits.counters
    assert isinstance(counters, LocalCounters)
    assert sorted(counters.values) == ["wr:rpm:k:2", "wr:rpm:k:3", "wr:rpm:other:2"]
    clock.advance(75.0)  # a counter lives two windows from its first count, then is dropped
    await limits.check("k", rpm=2, tpm=None)
    assert sorted(counters.values) == ["wr:rpm:k:3", "wr:rpm:k:4"]


async def test_tokens_per_minute_count_every_token_used() -> None:
    clock = FakeClock(10 * WINDOW_S)
    limits = limiter(clock)
    await limits.check("k", rpm=None, tpm=50)
    await limits.add_tokens("k", tpm=50, tokens=32)
    await limits.check("k", rpm=None, tpm=50)  # 32 < 50: admitted
    await limits.add_tokens("k", tpm=50, tokens=32)
    with pytest.raises(RateLimited) as refused:
        await limits.check("k", rpm=None, tpm=50)
    assert refused.value.message == "Too many tokens for API key k: 64/50 tokens per minute."
    assert refused.value.retry_after == 60.0
    clock.advance(WINDOW_S)
    await limits.check("k", rpm=None, tpm=50)
    await limits.add_tokens("k", tpm=None, tokens=10**6)  # no limit: nothing counted
    assert await limits.counters.get("wr:tpm:k:11") == 0


Scenario = Callable[[Path], Awaitable[tuple[list[httpx.Response], list[str]]]]


async def in_one_window(tmp_path: Path, scenario: Scenario
                        ) -> tuple[list[httpx.Response], list[str], float]:
    """Run `scenario` (answers and the key ids it made) within one minute of the wall clock,
    which the gateway's limiter reads: once more, on a fresh store, if a window began
    meanwhile (a run takes milliseconds). Also returns when its last request was sent."""
    for run in range(2):
        started = time.time()
        answers, key_ids = await scenario(tmp_path / f"run-{run}")
        ended = time.time()
        if int(started // WINDOW_S) == int(ended // WINDOW_S):
            return answers, key_ids, ended
    raise AssertionError("two windows began during two runs of milliseconds")


async def test_the_gateway_answers_429_with_retry_after(tmp_path: Path) -> None:
    engines = ScriptedFleet("e1")

    async def scenario(data_dir: Path) -> tuple[list[httpx.Response], list[str]]:
        secret, key_id = (await make_keys(data_dir, slow={"team": "team-c", "rpm": 2}))["slow"]
        engines["e1"].received.clear()
        async with in_process_gateway(engines, data_dir, require_api_keys=True) as gw:
            return [await gw.chat(BODY, **bearer(secret)) for _ in range(3)], [key_id]

    answers, (key_id,), sent = await in_one_window(tmp_path, scenario)
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json() == {
        "code": EXHAUSTED, "error": f"Too many requests for API key {key_id}: 3/2 requests per "
                                    "minute."}
    left = (int(sent // WINDOW_S) + 1) * WINDOW_S - sent  # when the answer was made, or later
    assert int(answers[2].headers["retry-after"]) in {max(1, round(left)),
                                                      max(1, math.ceil(left))}
    assert len(engines["e1"].received) == 2  # the refused request reached no engine


async def test_a_requests_tokens_count_against_its_key(tmp_path: Path) -> None:
    engines = ScriptedFleet("e1")  # 20 prompt and 12 completion tokens an answer

    async def scenario(data_dir: Path) -> tuple[list[httpx.Response], list[str]]:
        keys = await make_keys(data_dir, whole={"team": "team-t", "tpm": 40},
                               streamed={"team": "team-t", "tpm": 40})
        whole, streamed = bearer(keys["whole"][0]), bearer(keys["streamed"][0])
        stream = {**BODY, "stream": True}
        async with in_process_gateway(engines, data_dir, require_api_keys=True) as gw:
            answers = [await gw.chat(BODY, **whole) for _ in range(3)]
            answers += [await gw.chat(stream, **streamed) for _ in range(3)]
        return answers, [keys["whole"][1], keys["streamed"][1]]

    answers, (whole_id, streamed_id), _ = await in_one_window(tmp_path, scenario)
    assert [a.status_code for a in answers] == [200, 200, 429, 200, 200, 429]
    assert answers[2].json()["error"] == (
        f"Too many tokens for API key {whole_id}: 64/40 tokens per minute.")
    assert answers[5].json()["error"] == (
        f"Too many tokens for API key {streamed_id}: 64/40 tokens per minute.")
