"""A neutral surface's streamed answer (Responses, Messages): the engine's stream relayed as
that surface's server-sent events, the way the Chat relay sends its own.

One engine chunk is one await (`Streaming.next_events`) and one write to the client: its
events are read into text deltas and the final usage (`engine_calls.EventReader`), and each
becomes the surface's events (`SurfaceEncoder`); the opening events go out with the first
chunk, the closing ones with the body's end. No async generator or task group stands between
the engine and the client (Starlette's streaming response cost one of each per answer, and
every layer costs every chunk). The answer is metered however it ends: complete (its usage,
its cost in the closing events), cut off by its client or failed (`SurfaceStreamMeter.cut_off`:
what the engine reported). A failure after the first bytes is the surface's error event. The
engine's slot is released however the answer ends.
"""

from __future__ import annotations

from typing import Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from warmroute.api.bare_asgi import client_watch, send_stream
from warmroute.api.sse import SSE_HEADERS, SSE_MEDIA_TYPE
from warmroute.errors import WarmrouteError
from warmroute.gateway.engine_calls import Done, EventReader, ended_without_usage
from warmroute.gateway.proxy import ENGINE_HEADER
from warmroute.gateway.stream_meter import SurfaceStreamMeter
from warmroute.gateway.streaming import Streaming


class SurfaceEncoder(Protocol):
    """One surface's events, as the bytes that go on the wire."""

    def opening(self) -> bytes:
        """What precedes the first delta."""

    def delta(self, text: str) -> bytes:
        """One piece of the answer's text."""

    async def closing(self, done: Done, cost_in_usd_ticks: int) -> bytes:
        """The answer's end (the surface may store it first)."""

    def failure(self, exc: WarmrouteError) -> bytes:
        """The error event that ends a stream no engine could finish."""


class SurfaceRelay:
    """`next_body` gives the client's bytes for each engine chunk, and whether more follow."""

    def __init__(self, stream: Streaming, encoder: SurfaceEncoder,
                 metering: SurfaceStreamMeter) -> None:
        self.stream, self.encoder, self.metering = stream, encoder, metering
        self.reader = EventReader()
        self.opened = False

    async def next_body(self) -> tuple[bytes, bool]:
        parts: list[bytes] = []
        if not self.opened:
            self.opened = True
            parts.append(self.encoder.opening())
        try:
            events = await self.stream.next_events()
            if events is None:
                raise ended_without_usage(self.stream)
            for item in self.reader.read(events):
                if isinstance(item, Done):
                    cost = await self.metering.done(item.usage)
                    parts.append(await self.encoder.closing(item, cost))
                    return b"".join(parts), False
                parts.append(self.encoder.delta(item.text))
        except WarmrouteError as exc:  # no engine could go on, the store is down
            parts.append(self.encoder.failure(exc))
            return b"".join(parts), False
        return b"".join(parts), True


class SurfaceStream(Response):
    """The streamed answer as a response (from a bare handler or a FastAPI route): sent chunk
    by chunk while its client listens, metered however it ends, its engine released."""

    def __init__(self, relay: SurfaceRelay) -> None:
        super().__init__()
        self.relay = relay
        self.stream_headers = {"content-type": f"{SSE_MEDIA_TYPE}; charset=utf-8", **SSE_HEADERS,
                               ENGINE_HEADER: relay.stream.engine_id}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = self.relay
        try:
            with client_watch(scope, receive) as watch:
                await send_stream(send, 200, self.stream_headers, relay.next_body,
                                  relay.metering.cut_off, watch)
        finally:
            await relay.stream.aclose()
