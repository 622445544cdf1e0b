"""One client's stream across its engines: the events of the engine serving it, continued on
the next one whenever an engine breaks mid-answer (`resume.py` splices them; `proxy.py` opens
the stream and finds the engine that continues it)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from warmroute import jsoncodec
from warmroute.errors import EngineUnavailable
from warmroute.gateway.engine_stream import Upstream, UpstreamBroken
from warmroute.gateway.faults import FaultJudge, Verdict, event_error, event_verdict
from warmroute.gateway.membership import Membership
from warmroute.gateway.metrics import GatewayMetrics
from warmroute.gateway.policies import Decision
from warmroute.gateway.resume import StreamSplice
from warmroute.sse import Event

log = logging.getLogger(__name__)
DEFAULT_MAX_RESUMES = 2


class StreamOwner(Protocol):
    """What a stream needs of the proxy that opened it (`proxy.Proxy`)."""

    membership: Membership
    judge: FaultJudge
    metrics: GatewayMetrics

    async def resume_stream(self, decision: Decision, broken: Sequence[str], payload: bytes,
                            due: int | None = None) -> Upstream: ...


@dataclass
class Streaming:
    """A client's stream: its engine's events, continued on the next engine whenever one
    breaks mid-answer. Call `next_events()` until None (or iterate `events()`; either raises
    `UpstreamBroken` when no engine can continue), then always `aclose()`. The engine's bytes
    are decoded once, by the splice; every surface reads the same events. The relay's loop
    awaits one call per engine chunk, through no iterator layers (each layer cost every
    chunk of every stream)."""

    proxy: StreamOwner
    decision: Decision
    payload: bytes
    current: Upstream
    splice: StreamSplice
    max_resumes: int = DEFAULT_MAX_RESUMES
    due: int | None = None  # the request's `priority`, kept for every engine that continues it
    broken: list[str] = field(default_factory=list)

    @property
    def engine_id(self) -> str:
        """The engine serving the answer now (after a resume: the one continuing it)."""
        return self.current.engine_id

    @property
    def status(self) -> int:
        return self.current.status

    @property
    def headers(self) -> dict[str, str]:
        return self.current.headers

    async def events(self) -> AsyncIterator[list[Event]]:
        """The client's events, a list per engine chunk (never empty)."""
        while (events := await self.next_events()) is not None:
            yield events

    async def next_events(self) -> list[Event] | None:
        """The client's next events (never empty; a list per engine chunk), None at the end."""
        splice = self.splice
        while not splice.done:
            if splice.failed is not None:
                cause = f"sent {splice.failed}"
            else:
                try:
                    raw = await self.current.next_chunk()
                except UpstreamBroken:
                    raw, cause = None, "failed mid-stream"
                else:
                    cause = "ended its stream before [DONE]"
                if raw is not None:
                    out = splice.feed_events(raw)
                    if out:
                        return out
                    continue
            ending = await self._after_break(cause)
            if ending is not None:
                return ending
        return None

    async def _after_break(self, cause: str) -> list[Event] | None:
        """The engine broke the stream: the answer goes on on the next engine (None), or its
        end is written without one (the closing events), or it fails (raised)."""
        event = self.splice.error_event
        if event is not None and event_verdict(event) is Verdict.ANSWER:
            await self.aclose()  # the request failed alone: not resumed elsewhere
            raise event_error(event)
        await self._broke(cause, event)
        if not self.splice.needs_engine:
            return self.splice.closing_events()
        body = self.splice.continuation_body(jsoncodec.loads(self.payload))
        if body is None:
            return self.splice.closing_events()
        await self._resume(body, cause)
        return None

    async def _broke(self, cause: str, event: dict[str, object] | None) -> None:
        """The engine broke the stream: ejected if it is at fault (a transport failure or an
        early end; after an error event, as `FaultJudge` says), never tried again for it."""
        engine_id = self.current.engine_id
        log.warning("engine %s %s; the answer goes on elsewhere", engine_id, cause)
        self.broken.append(engine_id)
        await self.aclose()
        if event is None:
            self.proxy.membership.eject(engine_id, f"mid-stream: {cause}")
        elif event_verdict(event) is Verdict.SUSPECT:
            await self.proxy.judge.suspect(engine_id, f"mid-stream: {cause}", self.payload)

    async def _resume(self, body: dict[str, object], cause: str) -> None:
        """Continue on the next engine, or raise `UpstreamBroken` for the client."""
        failed = f"engine {self.current.engine_id} {cause}"
        if not self.splice.view.resumable or len(self.broken) > self.max_resumes:
            self.proxy.metrics.stream_resumes.labels("failed").inc()
            raise UpstreamBroken(f"{failed}; the answer cannot be resumed")
        payload = jsoncodec.dumps(body)
        try:
            self.current = await self.proxy.resume_stream(self.decision, self.broken, payload,
                                                          self.due)
        except EngineUnavailable as exc:
            self.proxy.metrics.stream_resumes.labels("failed").inc()
            raise UpstreamBroken(f"{failed}; no engine could continue: {exc.message}") from exc
        self.proxy.metrics.stream_resumes.labels("resumed").inc()
        self.splice.begin_continuation()

    async def aclose(self) -> None:
        """Close the engine stream in use (after `[DONE]`, or after the usage chunk that
        comes just before it, where the neutral surfaces stop reading: once the engine's body
        has ended, so that its connection is reused). Safe to call twice, and under
        cancellation."""
        try:
            if not self.current.closed:
                self.current.usage = self.splice.attempt_counts()
                if self.splice.done or self.splice.usage_sent:
                    await self.current.drain()
        finally:
            await self.current.aclose()
