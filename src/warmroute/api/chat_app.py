"""The Chat Completions surface of the gateway: `POST /v1/chat/completions`, relayed.

Thin: authenticate and admit the caller, read the body (413/415/400 as xAI answers them), put
the tenant's salt in, extract the routing features (400 for a bad key), place and forward in one
step, then answer: a JSON answer priced and metered before it leaves, or the engine's stream
relayed event by event (continued on another engine if its engine breaks). Every relayed answer
carries `x-warmroute-engine`. A client that goes away cancels its upstream request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from warmroute.api.disconnect import CLIENT_CLOSED_REQUEST, unless_disconnected
from warmroute.api.json_body import read_json_object
from warmroute.api.sse import ClosingStream
from warmroute.api.wire_errors import sse_error_event
from warmroute.errors import InvalidRequest, WarmrouteError
from warmroute.gateway.auth import Authenticator, Caller
from warmroute.gateway.features import request_features, tenant_id
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.metering import Meter
from warmroute.gateway.policies import RequestFeatures
from warmroute.gateway.proxy import Relayed, Streaming
from warmroute.gateway.resume import ClientView, upstream_stream_body
from warmroute.gateway.stream_meter import StreamMeter
from warmroute.gateway.usage import usage_from

DeferredStart = Callable[[Caller, RequestFeatures, dict[str, Any]], Awaitable[Response]]


def add_chat_routes(app: FastAPI, gw: Gateway, auth: Authenticator, meter: Meter,
                    deferred: DeferredStart | None = None) -> None:
    """`deferred` starts a request whose body asks for `deferred` (`api/deferred_app.py`)."""

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        caller = await auth.caller(request.headers.get("authorization"))
        await meter.admit(caller)
        body = tenant_body(await read_json_object(request, gw.config.max_body_bytes), caller)
        check_relayed_fields(body)
        features = request_features(request.headers, body, gw.indexes_prompts,
                                    tenant_id(caller.cache_salt))
        if deferred is not None and body.get("deferred", False) is not False:
            return await deferred(caller, features, body)
        view = ClientView.of(body) if body.get("stream") is True else None
        payload = gw.upstream_payload(upstream_stream_body(body) if view else body)
        opened = await unless_disconnected(
            request, place_and_forward(gw, features, payload, view), close_if_streaming
        )
        if opened is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        if isinstance(opened, Streaming):
            return relayed_stream(opened, StreamMeter(meter, caller, opened))
        return await metered_response(opened, meter, caller)


def check_relayed_fields(body: dict[str, Any]) -> None:
    """What the gateway itself reads of a relayed body must have its type (the engine checks
    the rest): `stream` decides how the answer is read, so `"stream": "true"` is a 400."""
    if not isinstance(body.get("stream", False), bool):
        raise InvalidRequest("stream must be true or false")
    if not isinstance(body.get("stream_options"), dict | None):
        raise InvalidRequest("stream_options must be an object")


def tenant_body(body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """The client's body with the caller's tenant salt in place of any salt it sent."""
    return {**body, "cache_salt": caller.cache_salt}


async def place_and_forward(
    gw: Gateway, features: RequestFeatures, payload: bytes, view: ClientView | None
) -> Relayed | Streaming:
    """Place and forward: the proxy takes the chosen engine's in-flight slot in the task step
    that placement ends in, so concurrent placements see each other's load (with shared
    routing state, a conversation new to this replica first costs one lookup).
    A stream (`view`: what its client asked for) is resumed on another engine if its engine
    breaks mid-answer."""
    decision = await gw.route(features)
    if view is not None:
        return await gw.proxy.open_stream(decision, payload, view, gw.config.max_resumes)
    return await gw.proxy.complete(decision, payload)


async def close_if_streaming(answer: Relayed | Streaming) -> None:
    if isinstance(answer, Streaming):
        await answer.aclose()


async def metered_response(answer: Relayed, meter: Meter, caller: Caller) -> Response:
    """A whole JSON answer: its usage gets `cost_in_usd_ticks` and a ledger row (committed
    before the answer leaves)."""
    if answer.status != 200:
        return relayed_response(answer)
    data = await metered_data(answer, meter, caller)
    headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-type"}
    return Response(orjson.dumps(data), status_code=answer.status, headers=headers,
                    media_type="application/json")


async def metered_data(answer: Relayed, meter: Meter, caller: Caller) -> dict[str, Any]:
    """A whole 200 answer's JSON, its ledger row written, its usage priced."""
    data: dict[str, Any] = orjson.loads(answer.body)
    usage = usage_from(data.get("usage") or {})
    model = str(data.get("model", ""))
    cost = await meter.record(caller, "chat.completions", model, answer.engine_id, usage)
    if isinstance(data.get("usage"), dict):
        data["usage"]["cost_in_usd_ticks"] = cost
    return data


def relayed_response(answer: Relayed) -> Response:
    return Response(answer.body, status_code=answer.status, headers=answer.headers)


def relayed_stream(upstream: Streaming, metering: StreamMeter) -> ClosingStream:
    """An engine's stream relayed event by event (continued on another engine if its engine
    breaks); the upstream is closed (and its engine slot released) however the response ends:
    finished, client gone, or no engine left to continue (an error event ends the stream)."""
    return ClosingStream(
        relay(upstream, metering), upstream.aclose, status_code=upstream.status,
        headers=upstream.headers,
    )


async def relay(upstream: Streaming, metering: StreamMeter) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.chunks():
            yield await metering.before_sending(chunk)
    except WarmrouteError as exc:  # no engine could go on, the request failed, the store is down
        yield sse_error_event(exc)
    finally:
        await metering.cut_off()
