"""`bare_asgi.client_watch`: the handler's work is cancelled once when its client goes away,
whether the server tells the handler (`connection_events`, the gateway's own server) or the
watch listens to `receive` (any other server). Every test runs with both kinds of client."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from warmroute.api.bare_asgi import ClientWatch, client_watch
from warmroute.connection_events import ConnectionEvents, give_connection_events


class Client:
    """A request's scope and `receive`; `leave()` is its client going away: `receive` says
    `http.disconnect`, or (`told`) the connection's events tell of its loss and `receive` is
    never to be called."""

    def __init__(self, told: bool) -> None:
        self.told = told
        self.scope: dict[str, Any] = {"type": "http"}
        self.events = ConnectionEvents()
        if told:
            give_connection_events(self.scope, self.events)
        self.gone = asyncio.Event()

    def leave(self) -> None:
        if self.told:
            self.events.connection_lost()
        else:
            self.gone.set()

    async def receive(self) -> dict[str, Any]:
        assert not self.told, "a watch told by its server does not listen to receive()"
        await self.gone.wait()
        return {"type": "http.disconnect"}


@pytest.fixture(params=[False, True], ids=["listening", "told"])
def client(request: pytest.FixtureRequest) -> Client:
    return Client(told=request.param)


async def test_a_disconnect_cancels_the_work_and_the_block_ends_quietly(client: Client) -> None:
    steps: list[str] = []

    async def handler() -> bool:
        with client_watch(client.scope, client.receive) as watch:
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
    client.leave()
    assert await asyncio.wait_for(task, 5) is True
    assert steps == ["cleaned up", "after"]
    assert task.cancelling() == 0


async def test_work_that_ends_first_is_not_cancelled(client: Client) -> None:
    async def handler() -> tuple[bool, str]:
        with client_watch(client.scope, client.receive) as watch:
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)  # no cancellation left pending for later awaits
        client.leave()  # a kept-alive connection closed after the answer: nobody is told
        await asyncio.sleep(0.01)
        return watch.cancel_called, "done"

    assert await asyncio.wait_for(handler(), 5) == (False, "done")


async def waiting_in_a_watch(client: Client) -> tuple[asyncio.Task[None], ClientWatch]:
    """A handler task waiting inside its client's watch."""
    watches: list[ClientWatch] = []

    async def handler() -> None:
        with client_watch(client.scope, client.receive) as watch:
            watches.append(watch)
            await asyncio.sleep(30)

    task = asyncio.create_task(handler())
    while not watches:
        await asyncio.sleep(0)
    return task, watches[0]


async def test_a_cancellation_from_elsewhere_goes_through(client: Client) -> None:
    task, _ = await waiting_in_a_watch(client)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_disconnect_and_another_cancellation_together_go_through(client: Client) -> None:
    task, watch = await waiting_in_a_watch(client)
    client.leave()
    for _ in range(100):  # the listener (or the server's callback) cancels
        if watch.cancel_called:
            break
        await asyncio.sleep(0)
    assert watch.cancel_called
    task.cancel()  # the server shuts down at the same time
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_disconnect_then_another_error_leaves_no_cancellation_counted(
    client: Client,
) -> None:
    watches: list[Any] = []

    async def handler() -> int:
        try:
            with client_watch(client.scope, client.receive) as watch:
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
    client.leave()
    assert await asyncio.wait_for(task, 5) == 0


async def test_a_swallowed_cancellation_is_raised_again_by_check(client: Client) -> None:
    """asyncio.wait_for in Python 3.11 can drop a cancellation that comes as its work ends;
    a relay's loop calls `check` each chunk, so the stream still stops."""
    chunks: list[int] = []

    async def handler() -> bool:
        with client_watch(client.scope, client.receive) as watch:
            for index in range(1000):
                with contextlib.suppress(asyncio.CancelledError):  # swallowed on its way,
                    await asyncio.sleep(0.001)  # as wait_for may
                watch.check()
                chunks.append(index)
        return watch.cancel_called

    task = asyncio.create_task(handler())
    await asyncio.sleep(0.02)
    client.leave()
    assert await asyncio.wait_for(task, 5) is True
    assert 0 < len(chunks) < 1000
    assert task.cancelling() == 0


@pytest.mark.parametrize("suspends", [False, True], ids=["ends-at-once", "waits"])
async def test_a_client_gone_before_the_watch_cancels_only_at_the_first_await(
    client: Client, suspends: bool,
) -> None:
    """The connection was lost before the block began: the work is cancelled at its first
    await, from outside, as a listener cancels it; work that ends without awaiting is not
    cancelled, and nothing is left pending for the awaits after the block (a stream's
    `aclose`)."""
    client.leave()
    steps: list[str] = []

    async def handler() -> bool:
        with client_watch(client.scope, client.receive) as watch:
            if suspends:
                await asyncio.sleep(30)
                steps.append("finished")
        await asyncio.sleep(0.01)  # the engine released: not cancelled
        steps.append("after")
        return watch.cancel_called

    task = asyncio.create_task(handler())
    assert await asyncio.wait_for(task, 5) is suspends
    assert steps == ["after"]
    assert task.cancelling() == 0
