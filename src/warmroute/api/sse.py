"""Server-sent event responses: the headers and media type, and a streaming response that always
releases what its stream holds. The event codec itself is `warmroute.sse`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
SSE_MEDIA_TYPE = "text/event-stream"


class ClosingStream(StreamingResponse):
    """A streaming response that always runs `close` when it ends, however it ends (finished,
    client gone, failed): for streams that hold an engine's slot. `close` must be idempotent
    and safe under cancellation."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]],
        **kwargs: Any,
    ) -> None:
        super().__init__(content, **kwargs)
        self.close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.close()
