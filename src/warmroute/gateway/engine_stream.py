"""One engine's stream, from its first chunk to its close: what `proxy.Streaming` reads a
client's answer from, one engine after another when one breaks.

`Upstream.next_chunk` hands over the bytes that came since the last call, one await per
engine chunk (no iterator layers on the relay's path); the chunk after the role chunk is the
first token (its time is observed, the engine's queued prefill released). A transport failure
mid-stream ejects the engine and is `UpstreamBroken`. `aclose` closes the connection (an engine
aborts a request whose connection closes) and gives the in-flight slot back to its owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Protocol

from warmroute.errors import EngineUnavailable
from warmroute.gateway.membership import Membership
from warmroute.gateway.metrics import GatewayMetrics
from warmroute.gateway.upstream import UpstreamError, UpstreamResponse
from warmroute.types import Usage

DRAIN_READS = 4  # reads after the answer's end before its connection is closed instead
DRAIN_S = 0.5  # and the time they may take


class UpstreamBroken(EngineUnavailable):
    """The engine failed after its stream had started; the client has part of an answer."""


class StreamOwner(Protocol):
    """Who opened the stream (the proxy): its engines' state and metrics, and the end of an
    answer (`finished`: the in-flight slot and any prefill still counted are freed)."""

    membership: Membership
    metrics: GatewayMetrics

    def finished(self, engine_id: str, status: int, usage: Usage | None,
                 work: float = 0.0) -> None: ...


@dataclass
class Upstream:
    """One engine's stream whose first chunk has arrived: `next_chunk()` until None, then
    `aclose()`."""

    engine_id: str
    status: int
    headers: dict[str, str]
    response: UpstreamResponse
    first: bytes | None
    proxy: StreamOwner
    work: float = 0.0
    opened_at: float = 0.0  # when the request was sent (monotonic); 0 once its token came
    usage: Usage | None = None  # as its engine last reported it (the stream's reader sets it)
    closed: bool = False

    async def next_chunk(self) -> bytes | None:
        """The upstream bytes that came since the last call (waiting for some); None at the
        stream's end. Raises `UpstreamBroken` if the engine fails."""
        if self.first is not None:
            first, self.first = self.first, None
            return first
        try:
            chunk = await self.response.next_piece()
        except UpstreamError as exc:
            self.proxy.membership.eject(self.engine_id, f"mid-stream {exc.cause}")
            raise UpstreamBroken(f"engine {self.engine_id} failed mid-stream") from exc
        if chunk is not None and (self.opened_at or self.work):
            self.prefilled()  # the role chunk comes at once, then the first token
        return chunk

    async def drain(self) -> None:
        """Read the rest of a body whose answer ended (`[DONE]` or the usage chunk before it
        came; its end may come in a later read), so that its connection goes back to the pool
        instead of being closed: a few reads within `DRAIN_S` at most; a failure or an engine
        that stalls there leaves it to `aclose`. Usually its end came with `[DONE]`: no wait."""
        if self.response.ended:
            return
        with contextlib.suppress(UpstreamError, TimeoutError):
            async with asyncio.timeout(DRAIN_S):
                for _ in range(DRAIN_READS):
                    if await self.response.next_piece() is None:
                        return

    async def aclose(self) -> None:
        """Close the upstream (an engine aborts a request whose client went away), release
        its in-flight slot and record its usage. Safe to call twice, and under cancellation."""
        if self.closed:
            return
        self.closed = True
        work, self.work = self.work, 0.0
        await self.response.aclose()  # never cancelled midway: each client shields its own
        self.proxy.finished(self.engine_id, self.status, self.usage, work)

    def prefilled(self) -> None:
        if self.opened_at:  # the first chunk after the role chunk: the first token
            self.proxy.metrics.first_token.observe(time.monotonic() - self.opened_at)
            self.opened_at = 0.0
        if self.work:
            self.proxy.membership.prefilled(self.engine_id, self.work)
            self.work = 0.0
