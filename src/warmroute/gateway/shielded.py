"""Work that must finish even when the task awaiting it is cancelled (a cut-off answer's ledger
row, an upstream connection's release), however the cancellation comes.

Two kinds reach the gateway's tasks: anyio's, level-triggered (a cancelled scope cancels every
await inside it again: Starlette's streaming responses, task groups), which a shielded scope
holds off; and asyncio's own, delivered once (`bare_asgi.client_watch`, `asyncio.timeout`),
which passes through an anyio shield. `shielded` holds off both: the work runs in a task of its
own, awaited under a shielded scope; a native cancellation that arrives meanwhile is raised
once the work has ended, not before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def shielded(work: Awaitable[T]) -> T:
    """The result of `work`, run to its end whatever cancels the caller meanwhile (a second
    native cancellation stops the wait, not the work)."""
    task = asyncio.ensure_future(work)
    with anyio.CancelScope(shield=True):
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            await task  # the cancellation was delivered once: wait for the work's end
            raise
    return result
