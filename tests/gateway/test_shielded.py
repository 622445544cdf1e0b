"""`shielded`: work that finishes however the task awaiting it is cancelled."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from warmroute.gateway.shielded import shielded


async def test_a_native_cancellation_waits_for_the_work_then_goes_through() -> None:
    written: list[str] = []
    started = asyncio.Event()

    async def row() -> None:
        started.set()
        await asyncio.sleep(0.05)
        written.append("row")

    task = asyncio.create_task(shielded(row()))
    await started.wait()
    task.cancel()  # as a client watch or asyncio.timeout cancels: once
    with pytest.raises(asyncio.CancelledError):
        await task
    assert written == ["row"]


async def test_an_anyio_cancellation_is_held_off_and_the_result_returned() -> None:
    results: list[int] = []

    async def row() -> int:
        await asyncio.sleep(0.05)
        return 7

    with anyio.CancelScope() as scope:
        scope.cancel()  # level-triggered: every unshielded await in the scope is cancelled
        results.append(await shielded(row()))
    assert results == [7]


async def test_the_work_s_own_failure_is_raised() -> None:
    async def row() -> None:
        raise ValueError("the store is down")

    with pytest.raises(ValueError, match="the store is down"):
        await shielded(row())
