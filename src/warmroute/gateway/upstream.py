"""The gateway's HTTP client for requests to engines: one small interface, two implementations.

`UpstreamClient.post` sends one Chat Completions body and answers as soon as the status and headers
are in; the body is read whole (`read`) or as it arrives (`next_piece`, one await per piece: the
stream relay's loop has no iterator layers), and `aclose` releases the
connection (an engine aborts a request whose connection closes). `get_body` is a whole `GET`
(health probes). Every transport failure — connect error, timeout, a connection reset mid-body —
is an `UpstreamError`.

- `engine_http.LeanUpstream`, the default: asyncio protocols and httptools' parser. Measured
  here on the same loopback requests, httpx's client spent 1.0 ms of CPU per request
  (encode/httpx#3215; Dynamo moved its frontend off httpx for the same reason), aiohttp's 0.35 ms,
  and a proxy that only relays added +0.83 ms p50 through aiohttp's against +0.37 ms through this
  one (`engine_http`'s docstring).
- `HttpxUpstream` wraps an `httpx.AsyncClient`, for callers that bring one — tests drive the whole
  proxy path against scripted engines through `httpx.MockTransport`, with no socket.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import httpx

from warmroute.gateway.shielded import shielded

MAX_CONNECTIONS = 1024
# Idle pooled connections are dropped by the client before the engine drops them: uvicorn (our
# engines, vLLM, SGLang) closes an idle keep-alive connection after 5 s, and a request sent on a
# connection the engine is closing at that moment fails with a reset that looks like a dead
# engine (seen with aiohttp's client, which kept them 15 s: an engine ejected for a reset).
KEEPALIVE_S = 4.0


class UpstreamError(Exception):
    """The engine could not be reached, or its connection failed; `cause` names how."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class UpstreamPoolFull(UpstreamError):
    """Every connection to engines is busy: the gateway itself is at its bound."""


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    @property
    def ended(self) -> bool:
        """Whether the whole body is in and read (nothing is left to drain)."""
    async def read(self) -> bytes: ...
    async def next_piece(self) -> bytes | None:
        """The body that came since the last piece (waiting for some); None at its end."""
    async def aclose(self) -> None:
        """Release the connection; runs to its end under cancellation too (it never waits,
        or shields itself)."""


class UpstreamClient(Protocol):
    async def post(self, url: str, content: bytes,
                   headers: Mapping[str, str]) -> UpstreamResponse: ...
    async def get_body(self, url: str, headers: Mapping[str, str]) -> tuple[int, bytes]: ...
    async def aclose(self) -> None: ...


class HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers
        self._pieces: AsyncIterator[bytes] | None = None
        self.ended = False  # not known without reading: a drain reads on

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.TransportError as exc:
            raise UpstreamError(type(exc).__name__) from exc

    async def next_piece(self) -> bytes | None:
        if self._pieces is None:
            self._pieces = self._response.aiter_raw()
        try:
            return await anext(self._pieces, None)
        except httpx.TransportError as exc:
            raise UpstreamError(type(exc).__name__) from exc

    async def aclose(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await shielded(self._response.aclose())


class HttpxUpstream:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def post(self, url: str, content: bytes,
                   headers: Mapping[str, str]) -> UpstreamResponse:
        request = self.client.build_request("POST", url, content=content, headers=headers)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.PoolTimeout as exc:
            raise UpstreamPoolFull("PoolTimeout") from exc
        except httpx.TransportError as exc:
            raise UpstreamError(type(exc).__name__) from exc
        return HttpxResponse(response)

    async def get_body(self, url: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
        try:
            response = await self.client.get(url, headers=headers)
        except httpx.TransportError as exc:
            raise UpstreamError(type(exc).__name__) from exc
        return response.status_code, response.content

    async def aclose(self) -> None:
        await self.client.aclose()


def as_upstream(client: httpx.AsyncClient | UpstreamClient) -> UpstreamClient:
    """An upstream client, whichever kind the caller brought."""
    return HttpxUpstream(client) if isinstance(client, httpx.AsyncClient) else client
