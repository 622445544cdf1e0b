"""`bare_asgi.client_watch`: the handler's work is cancelled once when its client goes away."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from warmroute.api.bare_asgi import ClientWatch, client_watch


class Client:
    """An ASGI `receive` whose `http.disconnect` comes when the test says so."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def test_a_disconnect_cancels_the_work_and_the_block_ends_quietly() -> None:
    client = Client()
    steps: list[str] = []

    async def handler() -> bool:
        with client_watch({}, client.receive) as watch:
            try:
                await asyncio.sleep(30)
                steps.append("finished")
            finally:
                await asyncio.sleep(0.01)  # a cut-off's ledger row: not cancelled again
                steps.append("cleaned up")
        steps.append("after")
        return watch.cancel_called

    task = asyncio.create_task(handler())
    await asyncio.sleep(0.01)
    client.gone.set()
    assert await asyncio.wait_for(task, 5) is True
    assert steps == ["cleaned up", "after"]
    assert task.cancelling() == 0


async def test_work_that_ends_first_is_not_cancelled() -> None:
    client = Client()

    async def handler() -> tuple[bool, str]:
        with client_watch({}, client.receive) as watch:
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)  # no cancellation left pending for later awaits
        return watch.cancel_called, "done"

    assert await asyncio.wait_for(handler(), 5) == (False, "done")


async def waiting_in_a_watch(client: Client) -> tuple[asyncio.Task[None], ClientWatch]:
    """A handler task waiting inside its client's watch."""
    watches: list[ClientWatch] = []

    async def handler() -> None:
        with client_watch({}, client.receive) as watch:
            watches.append(watch)
            await asyncio.sleep(30)

    task = asyncio.create_task(handler())
    while not watches:
        await asyncio.sleep(0)
    return task, watches[0]


async def test_a_cancellation_from_elsewhere_goes_through() -> None:
    task, _ = await waiting_in_a_watch(Client())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_disconnect_and_another_cancellation_together_go_through() -> None:
    client = Client()
    task, watch = await waiting_in_a_watch(client)
    client.gone.set()
    for _ in range(100):  # the listener runs and cancels
        if watch.cancel_called:
            break
        await asyncio.sleep(0)
    assert watch.cancel_called
    task.cancel()  # the server shuts down at the same time
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_disconnect_then_another_error_leaves_no_cancellation_counted() -> None:
    client = Client()
    watches: list[Any] = []

    async def handler() -> int:
        try:
            with client_watch({}, client.receive) as watch:
                watches.append(watch)
                try:
                    await asyncio.sleep(30)
                finally:
                    raise ValueError("the cut-off's row could not be written")
        except ValueError:
            pass
        await asyncio.sleep(0.01)  # not cancelled: nothing is left pending or counted
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    task = asyncio.create_task(handler())
    while not watches:
        await asyncio.sleep(0)
    client.gone.set()
    assert await asyncio.wait_for(task, 5) == 0


async def test_a_swallowed_cancellation_is_raised_again_by_check() -> None:
    """asyncio.wait_for in Python 3.11 can drop a cancellation that comes as its work ends;
    a relay's loop calls `check` each chunk, so the stream still stops."""
    client = Client()
    chunks: list[int] = []

    async def handler() -> bool:
        with client_watch({}, client.receive) as watch:
            for index in range(1000):
                with contextlib.suppress(asyncio.CancelledError):  # swallowed on its way,
                    await asyncio.sleep(0.001)  # as wait_for may
                watch.check()
                chunks.append(index)
        return watch.cancel_called

    task = asyncio.create_task(handler())
    await asyncio.sleep(0.02)
    client.gone.set()
    assert await asyncio.wait_for(task, 5) is True
    assert 0 < len(chunks) < 1000
    assert task.cancelling() == 0
