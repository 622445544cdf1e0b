"""Telling an engine's failure from a request's: what an engine's answer says about the engine.

A transport error (connect error, timeout, a connection broken mid-answer) means the engine: the
proxy ejects it at once. An answer is the engine's word. A 4xx, or an error the engine puts on
the request (a 422, or an error event with the code "The request could not be processed"), is
the request's: it goes back to the client and is never tried elsewhere. A 503 with
`retry-after` (or an "unavailable" error event) means the engine is busy: the request moves on,
nothing is ejected. Any other 5xx or error event makes the engine a suspect: `FaultJudge` probes
it at once and ejects it only when the probe fails too, or when several different requests
failed there within a window (a poison request alone can never eject an engine).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from warmroute.errors import (
    AuthError,
    EngineOverloaded,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    RequestFailed,
    WarmrouteError,
)
from warmroute.gateway.membership import Membership

log = logging.getLogger(__name__)
REQUEST_FAILED_CODE = "The request could not be processed"
INVALID_CODE = "Client specified an invalid argument"
UNAVAILABLE_CODE = "The service is currently unavailable"
DEFAULT_REQUEST_FAILURES_TO_EJECT = 3
DEFAULT_FAILURE_WINDOW_S = 60.0
MAX_REMEMBERED = 64  # distinct failed requests remembered per engine


class Verdict(enum.Enum):
    ANSWER = "answer"  # the request's own outcome: to the client, as it is
    BUSY = "busy"  # the engine is overloaded: try another, eject nothing
    SUSPECT = "suspect"  # maybe the engine: eject only if `FaultJudge` confirms it


def status_verdict(status: int, headers: Mapping[str, str]) -> Verdict:
    if status < 500:
        return Verdict.ANSWER
    if status == 503 and "retry-after" in {k.lower() for k in headers}:
        return Verdict.BUSY
    return Verdict.SUSPECT


def event_verdict(event: Mapping[str, Any]) -> Verdict:
    """What an error event in an engine's stream says (`{"code": ..., "error": ...}`)."""
    code = event.get("code")
    if code in (REQUEST_FAILED_CODE, INVALID_CODE):
        return Verdict.ANSWER
    if code == UNAVAILABLE_CODE:
        return Verdict.BUSY
    return Verdict.SUSPECT


def event_error(event: Mapping[str, Any]) -> WarmrouteError:
    """The exception a request-level error event stands for (its message kept)."""
    message = str(event.get("error") or "the engine failed this request")
    if event.get("code") == INVALID_CODE:
        return InvalidRequest(message)
    return RequestFailed(message)


ENGINE_ERRORS: dict[int, type[WarmrouteError]] = {
    401: AuthError, 403: PermissionDenied, 404: NotFound, 413: PayloadTooLarge,
    422: RequestFailed, 429: RateLimited,
}


def engine_error(status: int, body: bytes, headers: Mapping[str, str] | None = None
                 ) -> WarmrouteError:
    """An engine's non-200 answer as the exception a neutral surface raises: a 4xx as the
    matching client error, a 503 with `retry-after` as `EngineOverloaded`, another 5xx (whose
    engine passed its probe) as `RequestFailed`."""
    try:
        message = str(json.loads(body).get("error") or body.decode(errors="replace"))
    except (ValueError, AttributeError):
        message = body.decode(errors="replace")
    message = message[:1000]
    if status_verdict(status, headers or {}) is Verdict.BUSY:
        return EngineOverloaded(message, retry_after=retry_after(headers or {}))
    if status >= 500:
        return RequestFailed(f"the engine answered HTTP {status}: {message}")
    return ENGINE_ERRORS.get(status, InvalidRequest)(message)


def retry_after(headers: Mapping[str, str], default: float = 1.0) -> float:
    for key, value in headers.items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, min(float(value), 3600.0))
            except ValueError:
                return default
    return default


def request_digest(payload: bytes) -> str:
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


class FaultJudge:
    """Decides whether a suspect engine is at fault: its health probe, run at once (`check`:
    True when the engine answers it), or `threshold` different requests failing there within
    `window_s`. The clock is the membership's."""

    def __init__(
        self,
        membership: Membership,
        check: Callable[[str], Awaitable[bool]] | None,
        threshold: int = DEFAULT_REQUEST_FAILURES_TO_EJECT,
        window_s: float = DEFAULT_FAILURE_WINDOW_S,
    ) -> None:
        self.membership = membership
        self.check = check
        self.threshold = threshold
        self.window_s = window_s
        self.failed: dict[str, dict[str, float]] = {}  # engine → request digest → when

    async def at_fault(self, engine_id: str, digest: str) -> str | None:
        """Why the engine is to be ejected for this failed request, or None when it is not."""
        if self.check is not None and not await self.check(engine_id):
            return "its health probe failed too"
        now = self.membership.clock()
        seen = {d: t for d, t in self.failed.get(engine_id, {}).items() if t > now - self.window_s}
        seen[digest] = now
        if len(seen) > MAX_REMEMBERED:
            seen = dict(sorted(seen.items(), key=lambda item: item[1])[-MAX_REMEMBERED:])
        self.failed[engine_id] = seen
        if len(seen) >= self.threshold:
            self.failed.pop(engine_id, None)
            return f"{len(seen)} different requests failed there within {self.window_s:g} s"
        return None

    async def moves_on(self, engine_id: str, status: int, headers: Mapping[str, str],
                       payload: bytes) -> str | None:
        """Why the engine's non-stream answer is not the client's (the request moves to the
        next engine), or None when it is: a busy engine is passed over, a suspect one only when
        it is at fault (then it is ejected)."""
        verdict = status_verdict(status, headers)
        if verdict is Verdict.ANSWER:
            return None
        cause = f"HTTP {status}"
        if verdict is Verdict.BUSY:
            return cause + " (busy)"
        return cause if await self.suspect(engine_id, cause, payload) else None

    async def suspect(self, engine_id: str, cause: str, payload: bytes) -> bool:
        """Eject the engine if it is at fault for this failure of `payload`; whether so."""
        fault = await self.at_fault(engine_id, request_digest(payload))
        if fault is None:
            log.warning("engine %s: %s, but it is not at fault", engine_id, cause)
            return False
        self.membership.eject(engine_id, f"{cause}; {fault}")
        return True
