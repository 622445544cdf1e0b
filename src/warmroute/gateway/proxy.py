"""Forwarding one Chat Completions request to its engines, failing over before the first byte.

The engines of a `Decision` are tried in order. A connect error or a timeout before anything
has reached the client ejects that engine and moves the request to the next one at once (a dead
engine is never retried). An answer is judged by `faults.py`: a 4xx (a 422: the engine failed
this request alone) is the request's and passes through unchanged, never tried elsewhere; a 503
with `retry-after` moves on without ejecting; another 5xx ejects and moves on only when the
engine's probe, run at once, fails too (or several different requests failed there), else it
is the answer. "Before anything has reached the client" means: for a JSON answer, before the
whole body is in (it is buffered, so a crash mid-answer still fails over); for a stream, before
its first chunk. After that, a stream's events are relayed as they arrive; an error event the
engine puts on the request ends the client's stream with that error. If its engine breaks
(transport error, another error event, the stream ending before `[DONE]`), the answer is
continued on the next healthy engine of the decision and spliced into the same client stream
(`resume.py`), at most `max_resumes` times (the engine ejected as above); failing that, the
client gets an error event, never a silently truncated stream. Waits are bounded: at most
`max_in_flight` requests at once (beyond: 503 with `retry-after` at once), and a request that
finds every upstream connection busy is refused the same way, not queued. A placement on a
saturated engine may wait its turn in the admission gate first (`admission.py`). A stream
across its engines is a `Streaming` (`streaming.py`).

In-flight counts are held from the moment an engine is tried until its answer is done (for a
stream: until `Streaming.aclose`). This module is the only one that talks to engines about
requests; it knows HTTP, not the wire formats of errors (the app turns exceptions into those).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from warmroute import jsoncodec
from warmroute.errors import EngineOverloaded, EngineUnavailable
from warmroute.gateway.admission import AdmissionGate, AdmissionParams
from warmroute.gateway.engine_stream import Upstream
from warmroute.gateway.faults import (
    FaultJudge,
    Verdict,
    retry_after,
    status_verdict,
)
from warmroute.gateway.membership import PRIORITY_RETRY_S, Membership
from warmroute.gateway.metrics import GatewayMetrics
from warmroute.gateway.policies import FAILOVER, Decision
from warmroute.gateway.resume import ClientView, StreamSplice
from warmroute.gateway.streaming import DEFAULT_MAX_RESUMES, Streaming
from warmroute.gateway.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamPoolFull,
    as_upstream,
)
from warmroute.gateway.usage import usage_of
from warmroute.types import Usage

log = logging.getLogger(__name__)
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


@dataclass
class Relayed:
    """A complete answer, buffered: every JSON answer, and any non-200 answer to a stream."""

    engine_id: str
    status: int
    headers: dict[str, str]
    body: bytes

    @functools.cached_property
    def data(self) -> object:
        """The body's JSON, decoded once for all its readers (None if it is not JSON)."""
        with contextlib.suppress(ValueError):  # orjson's error, or bytes that are not UTF-8
            return jsoncodec.loads(self.body)
        return None


class Proxy:
    def __init__(
        self,
        client: UpstreamClient | httpx.AsyncClient,
        membership: Membership,
        metrics: GatewayMetrics,
        judge: FaultJudge | None = None,
        max_in_flight: int | None = None,
        gate: AdmissionGate | None = None,
        priority: AdmissionParams | None = None,
    ) -> None:
        """`judge` decides whether an engine that answered a 5xx is at fault (default: only
        after several different requests failed there); `max_in_flight` bounds the requests
        this gateway has at engines at once; `gate` holds a placement on a saturated engine
        (`admission.py`); with `priority`, each request tells its engine when its first token
        is due (`due_ms`, at the gate's rate and bound), for an engine that prefills by
        priority."""
        self.client = as_upstream(client)
        self.membership = membership
        self.metrics = metrics
        self.judge = judge or FaultJudge(membership, None)
        self.max_in_flight = max_in_flight
        self.gate = gate
        self.priority = priority

    async def complete(self, decision: Decision, payload: bytes,
                       background: bool = False) -> Relayed:
        """A non-streaming request: the first engine that answers, buffered. `background`
        (a deferred completion, read back later): due `BACKGROUND_DELAY_MS` later."""
        answer = await self._forward(decision, payload, False, self._due(decision, background))
        assert isinstance(answer, Relayed)
        return answer

    async def open_stream(
        self,
        decision: Decision,
        payload: bytes,
        view: ClientView | None = None,
        max_resumes: int = DEFAULT_MAX_RESUMES,
    ) -> Relayed | Streaming:
        """A streaming request: the first engine whose stream starts (or that answers 4xx).
        `payload` should ask for what a resume needs (`resume.upstream_stream_body`); `view`
        is what the client asked for (default: usage, as the neutral surfaces want)."""
        due = self._due(decision)
        answer = await self._forward(decision, payload, True, due)
        if isinstance(answer, Relayed):
            return answer
        splice = StreamSplice(view or ClientView())
        return Streaming(self, decision, payload, answer, splice, max_resumes, due)

    async def resume_stream(
        self, decision: Decision, broken: Sequence[str], payload: bytes, due: int | None = None
    ) -> Upstream:
        """Continue a broken stream: the decision's next healthy engines (then any other
        healthy one), never one that broke it; no waiting for a health probe. `due`: the
        stream's `priority` (its engines were told when its first token was due: a resumed
        answer ranks before what came after it)."""
        healthy = self.membership.loads()  # the healthy engines, in order
        ranked = [e for e in decision.ranked if e in healthy and e not in broken]
        tried = {*ranked, *broken}
        ranked += [e for e in healthy if e not in tried]
        answer = await self._try_in_order(ranked, payload, stream=True, moved=True,
                                          work=decision.work, due=due)
        if isinstance(answer, Relayed):
            message = answer.body.decode(errors="replace")[:200]
            raise EngineUnavailable(
                f"engine {answer.engine_id} answered HTTP {answer.status}: {message}"
            )
        return answer

    def finished(self, engine_id: str, status: int, usage: Usage | None,
                 work: float = 0.0) -> None:
        """An answer ended: its in-flight slot and any prefill work still counted are freed."""
        self.membership.release(engine_id, work)
        self.metrics.answers.labels(engine_id, str(status)).inc()
        self.metrics.record_usage(engine_id, usage)

    def _due(self, decision: Decision, background: bool = False) -> int | None:
        """The `priority` every engine tried for this request is sent (set once, at
        placement, so a failover or a resume does not rank behind what came after it)."""
        if self.priority is None:
            return None
        later = BACKGROUND_DELAY_MS if background else 0
        return later + due_ms(decision.work, self.priority.ms_per_chunk,
                              self.priority.max_hold_s * 1000.0)

    async def _forward(
        self, decision: Decision, payload: bytes, stream: bool, due: int | None = None
    ) -> Relayed | Upstream:
        if self.max_in_flight is not None:
            in_flight = sum(s.in_flight for s in self.membership.engines.values())
            if in_flight >= self.max_in_flight:
                raise EngineOverloaded(
                    f"the gateway already has {in_flight} requests in flight; retry shortly"
                )
        self.metrics.decisions.labels(decision.reason).inc()
        return await self._try_in_order(decision.ranked, payload, stream, moved=False,
                                         work=decision.work, due=due)

    async def _try_in_order(
        self, ranked: Sequence[str], payload: bytes, stream: bool, moved: bool,
        work: float = 0.0, due: int | None = None,
    ) -> Relayed | Upstream:
        """The first of `ranked` that answers; each move past the placement counts as a
        failover, and an engine ejected meanwhile is skipped (never retry a dead engine)."""
        failures: list[str] = []
        busy: list[float] = []
        for engine_id in ranked:
            if failures or moved:
                if engine_id not in self.membership.healthy_ids():
                    continue
                self.metrics.decisions.labels(FAILOVER).inc()
            placed = not (moved or failures)
            self.membership.acquire(engine_id, work, moved=not placed)
            try:
                if not await self._through_gate(engine_id, work, stream, placed):
                    self.membership.release(engine_id, work)
                    failures.append(f"{engine_id}: lost while the request waited for it")
                    continue
                try:
                    answer = await self._attempt(engine_id, payload, stream, work, due)
                finally:
                    if not stream and self.gate is not None:
                        self.gate.json_done(engine_id, work)
            except EngineFailed as failure:
                self.membership.release(engine_id, work)
                self.membership.eject(engine_id, failure.cause)
                self.metrics.failovers.labels(engine_id).inc()
                failures.append(f"{engine_id}: {failure.cause}")
                continue
            except BaseException:
                self.membership.release(engine_id, work)
                raise
            if isinstance(answer, Relayed):
                self.finished(engine_id, answer.status, usage_of(answer.data), work)
                cause = await self.judge.moves_on(engine_id, answer.status, answer.headers,
                                                  payload)
                if cause is not None:
                    self.metrics.failovers.labels(engine_id).inc()
                    failures.append(f"{engine_id}: {cause}")
                    if status_verdict(answer.status, answer.headers) is Verdict.BUSY:
                        busy.append(retry_after(answer.headers))
                    continue
            return answer
        reason = "no engine could answer: " + ("; ".join(failures) or "none left")
        if busy and len(busy) == len(failures):
            raise EngineOverloaded(reason, retry_after=min(busy))
        raise EngineUnavailable(reason)

    async def _through_gate(self, engine_id: str, work: float, stream: bool,
                            placed: bool) -> bool:
        """Whether the request may go to `engine_id` now: a placement waits its turn at a
        saturated engine (`admission.py`), and moves on if the engine was lost meanwhile; a
        JSON answer's prompt counts as one whose first token is never seen."""
        gate = self.gate
        if gate is None:
            return True
        if placed and (await gate.admit(engine_id, work)
                       and engine_id not in self.membership.healthy_ids()):
            return False
        if not stream:
            gate.json_sent(engine_id, work)
        return True

    async def _attempt(self, engine_id: str, payload: bytes, stream: bool,
                       work: float = 0.0, due: int | None = None) -> Relayed | Upstream:
        endpoint = self.membership.engines[engine_id].endpoint
        headers = {**dict(UPSTREAM_HEADERS), **endpoint.auth_headers()}
        ranked = due is not None and self.membership.takes_priority(engine_id)
        sent = with_priority(payload, due) if ranked and due is not None else payload
        started = time.monotonic()
        try:
            response = await self.client.post(endpoint.url + CHAT_PATH, sent, headers)
        except UpstreamPoolFull as exc:  # this gateway is busy, not the engine
            raise EngineOverloaded(
                "every connection to the engines is busy; retry shortly"
            ) from exc
        except UpstreamError as exc:
            raise EngineFailed(exc.cause) from exc
        try:
            relayed = relayed_headers(response.headers, engine_id)
            if not stream or response.status != 200:  # buffered whole, judged by the caller
                body = await response.read()
                await response.aclose()
                if response.status == 200:
                    self.metrics.first_token.observe(time.monotonic() - started)
                elif ranked and refuses_priority(response.status, body):
                    log.warning("engine %s does not schedule by priority (%s): sent none for "
                                "%.0f s", engine_id, body[:200].decode(errors="replace"),
                                PRIORITY_RETRY_S)
                    self.membership.refused_priority(engine_id)
                    return await self._attempt(engine_id, payload, stream, work, due)
                return Relayed(engine_id, response.status, relayed, body)
            first = await response.next_piece()
            return Upstream(engine_id, response.status, relayed, response, first, self, work,
                            opened_at=started)
        except UpstreamError as exc:
            await response.aclose()
            raise EngineFailed(exc.cause) from exc
        except BaseException:
            await response.aclose()  # runs to its end under cancellation (or shields itself)
            raise


# A deferred completion (its client reads the answer back later) ranks behind every request
# whose client waits that comes within a minute after it, and before those that come later.
BACKGROUND_DELAY_MS = 60_000


def due_ms(work: float, ms_per_chunk: float, max_ms: float = math.inf) -> int:
    """When a request's first token is due, for ordering an engine's prefill: now (Unix ms,
    comparable across gateway replicas) plus `ms_per_chunk` for each chunk of its work, at
    most `max_ms`: a short prefill overtakes a long one that came less than their difference
    before it, and nothing that came `max_ms` or more after it (the longest prompts, which
    would otherwise wait for every shorter one that came for seconds after them)."""
    return int(time.time() * 1000.0 + min(ms_per_chunk * work, max_ms))


REFUSALS = (b"priority scheduling is not enabled", b"--scheduling-policy priority")


def refuses_priority(status: int, body: bytes) -> bool:
    """An engine's answer refusing the `priority` the gateway sent (the client's own never
    reaches it): vLLM without `--scheduling-policy priority` answers 400 "Got priority N but
    Priority scheduling is not enabled.", warmroute's `fcfs` engine 400 naming the flag. Only
    those words count: a validation error that echoes the body names `priority` too."""
    if status != 400:
        return False
    lowered = body.lower()
    return any(words in lowered for words in REFUSALS)


def with_priority(payload: bytes, priority: int) -> bytes:
    """The JSON object `payload` with vLLM's `priority` field first (the gateway's bodies
    never carry one of their own: `Gateway.upstream_payload`)."""
    if payload[:1] != b"{":
        return payload
    rest = payload[1:].lstrip()
    return b'{"priority":%d%s%s' % (priority, b"" if rest[:1] == b"}" else b",", rest)


def relayed_headers(headers: Mapping[str, str], engine_id: str) -> dict[str, str]:
    relayed = {k: v for k, v in headers.items() if k.lower() not in NOT_RELAYED}
    relayed[ENGINE_HEADER] = engine_id
    return relayed
