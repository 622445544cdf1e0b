"""REST deferred completions: `deferred: true` on `POST /v1/chat/completions` answers
`{"request_id"}` at once and runs the completion in the background (placed, relayed, metered and
priced as a synchronous one); `GET /v1/chat/deferred-completion/{request_id}` answers 202 while
it runs, then 200 with the completion (or the error it ended with, as it would have been
answered), 404 for an unknown or expired id or another tenant's. Runs are shared with gRPC's
deferred completions (`gateway/deferred.py`); each surface reads only its own results.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from warmroute.api.chat_app import DeferredStart, metered_data, place_and_forward
from warmroute.api.wire_errors import deferred_error_response, relayed_failure
from warmroute.errors import InvalidRequest, NotFound
from warmroute.gateway.auth import Authenticator, Caller
from warmroute.gateway.deferred import DeferredFailed, DeferredRuns, surface_of
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.metering import Meter
from warmroute.gateway.policies import RequestFeatures
from warmroute.gateway.proxy import Relayed
from warmroute.store import DeferredStatus


def deferred_chat(gw: Gateway, meter: Meter, runs: DeferredRuns) -> DeferredStart:
    """Starts a Chat Completions request with `deferred` in its body."""

    async def start(caller: Caller, features: RequestFeatures, body: dict[str, Any]) -> Response:
        if body.pop("deferred") is not True:
            raise InvalidRequest("deferred must be true or false")
        if body.get("stream") is True:
            raise InvalidRequest("a deferred completion cannot be streamed: leave out stream")
        payload = gw.upstream_payload(body)

        async def work() -> dict[str, Any]:
            answer = await place_and_forward(gw, features, payload, None, background=True)
            if not isinstance(answer, Relayed):  # not asked for: a stream is never opened here
                raise InvalidRequest("a deferred completion cannot be streamed")
            if answer.status != 200:
                failure = relayed_failure(answer.status, answer.body)
                raise DeferredFailed(str(failure["message"]), failure)
            return await metered_data(answer, meter, caller)

        return JSONResponse({"request_id": await runs.start(caller.team, work)})

    return start


def add_deferred_routes(app: FastAPI, runs: DeferredRuns, auth: Authenticator) -> None:
    @app.get("/v1/chat/deferred-completion/{request_id}")
    async def deferred_completion(request_id: str, request: Request) -> Response:
        caller = await auth.caller(request.headers.get("authorization"))
        found = await runs.get(request_id, caller.team)
        if found.status is DeferredStatus.PENDING:
            return JSONResponse({"request_id": request_id, "status": "pending"}, status_code=202)
        if found.status is DeferredStatus.EXPIRED:
            raise NotFound(f"Deferred request {request_id!r} has expired")
        if found.status is DeferredStatus.FAILED:
            return deferred_error_response(found.error or {})
        result = found.result or {}
        if surface_of(result) != "rest":
            raise InvalidRequest(f"Deferred request {request_id!r} was started over gRPC: "
                                 "read it with GetDeferredCompletion")
        return JSONResponse(result)
