"""Work on behalf of a client that may leave: cancel it when the client disconnects.

Starlette notices a disconnect only while it streams; for an answer that is computed first and
sent after, this polls the connection and cancels the work (an engine then aborts the sequence
and frees its blocks; the gateway closes its upstream request).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request

DISCONNECT_POLL_S = 0.25
CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away"; nobody reads it
T = TypeVar("T")


async def unless_disconnected(
    request: Request,
    work: Awaitable[T],
    on_late: Callable[[T], Awaitable[None]] | None = None,
) -> T | None:
    """Await `work`; None if the client went away first (the work is cancelled, and a result
    that arrived anyway is handed to `on_late` to release what it holds)."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    finished_anyway = await task
                    if on_late is not None:
                        await on_late(finished_anyway)
                return None
        return task.result()
    finally:
        if not task.done():  # we were cancelled ourselves
            task.cancel()
