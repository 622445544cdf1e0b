"""Forwarding one Chat Completions request to its engines, failing over before the first byte.

The engines of a `Decision` are tried in order. A connect error, a timeout or a 5xx before
anything has reached the client ejects that engine and moves the request to the next one at
once (a dead engine is never retried); a 4xx is the engine's answer and passes through
unchanged. "Before anything has reached the client" means: for a JSON answer, before the whole
body is in (it is buffered, so a crash mid-answer still fails over); for a stream, before its
first chunk. After that, bytes are relayed as they arrive, never re-framed.

In-flight counts are held from the moment an engine is tried until its answer is done (for a
stream: until `Streaming.aclose`). This module is the only one that talks to engines about
requests; it knows HTTP, not the wire formats of errors (the app turns exceptions into those).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import httpx

from warmroute.errors import EngineUnavailable
from warmroute.gateway.membership import Membership
from warmroute.gateway.metrics import GatewayMetrics
from warmroute.gateway.policies import FAILOVER, Decision
from warmroute.gateway.usage import SseUsageTap, TokenUsage, usage_of_json

ENGINE_HEADER = "x-warmroute-engine"
CHAT_PATH = "/v1/chat/completions"
UPSTREAM_HEADERS = (("content-type", "application/json"), ("accept-encoding", "identity"))
NOT_RELAYED = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer",
     "upgrade", "proxy-authenticate", "proxy-connection", "date", "server", ENGINE_HEADER}
)


class EngineFailed(Exception):
    """This engine cannot answer this request; `cause` is for metrics and logs."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class UpstreamBroken(EngineUnavailable):
    """The engine failed after its stream had started; the client has part of an answer."""


@dataclass
class Relayed:
    """A complete answer, buffered: every JSON answer, and any non-200 answer to a stream."""

    engine_id: str
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Streaming:
    """A stream whose first chunk has arrived. Iterate `chunks()`, then always `aclose()`."""

    engine_id: str
    status: int
    headers: dict[str, str]
    response: httpx.Response
    upstream: AsyncIterator[bytes]
    first: bytes
    proxy: Proxy
    tap: SseUsageTap = field(default_factory=SseUsageTap)
    closed: bool = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The upstream bytes as they arrive; raises `UpstreamBroken` if the engine fails."""
        if self.first:
            self.tap.feed(self.first)
            yield self.first
        try:
            async for chunk in self.upstream:
                self.tap.feed(chunk)
                yield chunk
        except httpx.TransportError as exc:
            self.proxy.membership.eject(self.engine_id, f"mid-stream {type(exc).__name__}")
            raise UpstreamBroken(f"engine {self.engine_id} failed mid-stream") from exc

    async def aclose(self) -> None:
        """Close the upstream (an engine aborts a request whose client went away), release
        its in-flight slot and record its usage. Safe to call twice, and under cancellation."""
        if self.closed:
            return
        self.closed = True
        with anyio.CancelScope(shield=True):
            await self.response.aclose()
        self.proxy.finished(self.engine_id, self.status, self.tap.usage())


class Proxy:
    def __init__(
        self, client: httpx.AsyncClient, membership: Membership, metrics: GatewayMetrics
    ) -> None:
        self.client = client
        self.membership = membership
        self.metrics = metrics

    async def complete(self, decision: Decision, payload: bytes) -> Relayed:
        """A non-streaming request: the first engine that answers, buffered."""
        answer = await self._forward(decision, payload, stream=False)
        assert isinstance(answer, Relayed)
        return answer

    async def open_stream(self, decision: Decision, payload: bytes) -> Relayed | Streaming:
        """A streaming request: the first engine whose stream starts (or that answers 4xx)."""
        return await self._forward(decision, payload, stream=True)

    def finished(self, engine_id: str, status: int, usage: TokenUsage | None) -> None:
        self.membership.release(engine_id)
        self.metrics.answers.labels(engine_id, str(status)).inc()
        self.metrics.record_usage(engine_id, usage)

    async def _forward(
        self, decision: Decision, payload: bytes, stream: bool
    ) -> Relayed | Streaming:
        self.metrics.decisions.labels(decision.reason).inc()
        failures: list[str] = []
        for engine_id in decision.ranked:
            if failures:
                if engine_id not in self.membership.healthy_ids():
                    continue  # ejected meanwhile by another request: never retry a dead engine
                self.metrics.decisions.labels(FAILOVER).inc()
            self.membership.acquire(engine_id)
            try:
                answer = await self._attempt(engine_id, payload, stream)
            except EngineFailed as failure:
                self.membership.release(engine_id)
                self.membership.eject(engine_id, failure.cause)
                self.metrics.failovers.labels(engine_id).inc()
                failures.append(f"{engine_id}: {failure.cause}")
                continue
            except BaseException:
                self.membership.release(engine_id)
                raise
            if isinstance(answer, Relayed):
                self.finished(engine_id, answer.status, usage_of_json(answer.body))
            return answer
        raise EngineUnavailable("no engine could answer: " + "; ".join(failures))

    async def _attempt(self, engine_id: str, payload: bytes, stream: bool) -> Relayed | Streaming:
        url = self.membership.url(engine_id) + CHAT_PATH
        request = self.client.build_request("POST", url, content=payload, headers=UPSTREAM_HEADERS)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise EngineFailed(type(exc).__name__) from exc
        try:
            if response.status_code >= 500:
                raise EngineFailed(f"HTTP {response.status_code}")
            headers = relayed_headers(response, engine_id)
            if not stream or response.status_code != 200:
                body = await response.aread()
                return Relayed(engine_id, response.status_code, headers, body)
            upstream = response.aiter_raw()
            first = await anext(upstream, b"")
            return Streaming(
                engine_id, response.status_code, headers, response, upstream, first, self
            )
        except httpx.TransportError as exc:
            await close_quietly(response)
            raise EngineFailed(type(exc).__name__) from exc
        except BaseException:
            await close_quietly(response)
            raise


async def close_quietly(response: httpx.Response) -> None:
    with anyio.CancelScope(shield=True), contextlib.suppress(httpx.HTTPError):
        await response.aclose()


def relayed_headers(response: httpx.Response, engine_id: str) -> dict[str, str]:
    headers = {k: v for k, v in response.headers.items() if k.lower() not in NOT_RELAYED}
    headers[ENGINE_HEADER] = engine_id
    return headers
