"""The Chat Completions surface of the gateway: `POST /v1/chat/completions`, relayed.

Thin: authenticate and admit the caller, read the body (413/415/400 as xAI answers them), put
the tenant's salt in, extract the routing features (400 for a bad key), place and forward in one
step, then answer: a JSON answer priced and metered before it leaves, or the engine's stream
relayed event by event (continued on another engine if its engine breaks). Every relayed answer
carries `x-warmroute-engine`. A client that goes away cancels its upstream request. The hot
route of the gateway, so it is served as a bare ASGI handler (`api/bare_asgi.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from warmroute.api.bare_asgi import answer_error, client_watch, send_stream, serve_bare
from warmroute.api.disconnect import CLIENT_CLOSED_REQUEST
from warmroute.api.json_body import read_json_object
from warmroute.api.wire_errors import sse_error_event
from warmroute.errors import EngineUnavailable, InvalidRequest, WarmrouteError
from warmroute.gateway.auth import Authenticator, Caller
from warmroute.gateway.features import request_features, tenant_id
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.metering import Meter
from warmroute.gateway.policies import RequestFeatures
from warmroute.gateway.proxy import Relayed
from warmroute.gateway.resume import ClientView, upstream_stream_body
from warmroute.gateway.stream_meter import StreamMeter
from warmroute.gateway.streaming import Streaming
from warmroute.gateway.usage import usage_from
from warmroute.sse import encode_events

DeferredStart = Callable[[Caller, RequestFeatures, dict[str, Any]], Awaitable[Response]]


def add_chat_routes(app: FastAPI, gw: Gateway, auth: Authenticator, meter: Meter,
                    deferred: DeferredStart | None = None) -> None:
    """`deferred` starts a request whose body asks for `deferred` (`api/deferred_app.py`).
    The route is served bare (`api/bare_asgi.py`) where the app allows it, and through FastAPI
    otherwise; FastAPI keeps it for the OpenAPI document either way."""
    handler = ChatCompletionsRoute(gw, auth, meter, deferred)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return BareAnswer(handler)

    serve_bare(app, "POST", "/v1/chat/completions", handler, gw.config.body_timeout_s)


class BareAnswer(Response):
    """A bare ASGI handler answering through FastAPI (for apps without bare routes)."""

    def __init__(self, handler: ASGIApp) -> None:
        super().__init__()
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


class ChatCompletionsRoute:
    """`POST /v1/chat/completions` as a bare ASGI handler."""

    def __init__(self, gw: Gateway, auth: Authenticator, meter: Meter,
                 deferred: DeferredStart | None) -> None:
        self.gw, self.auth, self.meter, self.deferred = gw, auth, meter, deferred

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self.answer(Request(scope, receive), send)
        except AnswerStarted:
            raise  # nothing but the connection is left to end
        except Exception as exc:  # before the answer started: FastAPI's handlers' answers
            await answer_error(exc, scope, receive, send)
            return
        if response is not None:
            await response(scope, receive, send)

    async def answer(self, request: Request, send: Send) -> Response | None:
        """The answer to send, or None when a stream was sent here (errors after its first
        bytes are `AnswerStarted`)."""
        gw, meter, receive = self.gw, self.meter, request.receive
        caller = await self.auth.caller(request.headers.get("authorization"))
        await meter.admit(caller)
        body = tenant_body(await read_json_object(request, gw.config.max_body_bytes), caller)
        check_relayed_fields(body)
        features = request_features(request.headers, body, gw.indexes_prompts,
                                    tenant_id(caller.cache_salt))
        if self.deferred is not None and body.get("deferred", False) is not False:
            return await self.deferred(caller, features, body)
        view = ClientView.of(body) if body.get("stream") is True else None
        payload = gw.upstream_payload(upstream_stream_body(body) if view else body)
        opened: Relayed | Streaming | None = None
        try:
            # One watch for the placement and the stream.
            with client_watch(request.scope, receive) as watch:
                opened = await place_and_forward(gw, features, payload, view)
                if isinstance(opened, Streaming):
                    relay = ChatRelay(opened, StreamMeter(meter, caller, opened))
                    try:
                        await send_stream(send, opened.status, opened.headers,
                                          relay.next_body, relay.metering.cut_off, watch)
                    except Exception as exc:
                        raise AnswerStarted() from exc
                    return None
        finally:
            if isinstance(opened, Streaming):
                await opened.aclose()
        if watch.cancel_called or opened is None:  # the client went away
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return await metered_response(opened, meter, caller)


class AnswerStarted(Exception):
    """A failure after an answer's first bytes went out: its status can no longer change."""


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
    gw: Gateway, features: RequestFeatures, payload: bytes, view: ClientView | None,
    background: bool = False,
) -> Relayed | Streaming:
    """Place and forward: the proxy takes the chosen engine's in-flight slot in the task step
    that placement ends in, so concurrent placements see each other's load (with shared
    routing state, a conversation new to this replica first costs one lookup).
    A stream (`view`: what its client asked for) is resumed on another engine if its engine
    breaks mid-answer. `background`: a deferred completion (ranked behind interactive work
    at engines that schedule by priority)."""
    decision = await gw.route(features)
    if view is not None:
        return await gw.proxy.open_stream(decision, payload, view, gw.config.max_resumes)
    return await gw.proxy.complete(decision, payload, background)


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
    data = answer.data
    if not isinstance(data, dict):
        raise EngineUnavailable(f"engine {answer.engine_id} answered 200 without a JSON object")
    usage = usage_from(data.get("usage") or {})
    model = str(data.get("model", ""))
    cost = await meter.record(caller, "chat.completions", model, answer.engine_id, usage)
    if isinstance(data.get("usage"), dict):
        data["usage"]["cost_in_usd_ticks"] = cost
    return data


def relayed_response(answer: Relayed) -> Response:
    return Response(answer.body, status_code=answer.status, headers=answer.headers)


class ChatRelay:
    """An engine's stream relayed event by event (continued on another engine if its engine
    breaks), metered; an error event ends it when no engine could go on. `next_body` is
    awaited once per engine chunk until it says no more follow; whoever sends it calls
    `metering.cut_off` however the answer ends, and closes the upstream (releasing its engine
    slot)."""

    def __init__(self, upstream: Streaming, metering: StreamMeter) -> None:
        self.upstream, self.metering = upstream, metering

    async def next_body(self) -> tuple[bytes, bool]:
        """The client's bytes for the engine's next chunk, and whether more follow (not after
        `[DONE]` or an error event)."""
        try:
            events = await self.upstream.next_events()
            if events is None:
                return b"", False
            if self.metering.due:
                body = await self.metering.before_sending(events)
            else:
                body = encode_events(events)
        except WarmrouteError as exc:  # no engine could go on, the request failed, the store
            return sse_error_event(exc), False  # is down
        return body, not self.upstream.splice.done
