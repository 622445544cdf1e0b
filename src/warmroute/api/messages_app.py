"""`POST /v1/messages` on the gateway: Anthropic's Messages API, placed, metered and priced like
every other surface, answered (errors included) in Anthropic's shapes.

The key comes from `x-api-key` (what the Anthropic SDKs send) or `Authorization: Bearer`; the
routing key from `x-grok-conv-id` (or a `prompt_cache_key` in the body). A stateless surface:
each request carries its whole conversation, which `Conversations.place` puts where its prefix
is warm. The answer carries `x-warmroute-engine`.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from warmroute.api import messages as wire
from warmroute.api.bare_asgi import BareHandler, serve_bare
from warmroute.api.json_body import json_response, read_json_object
from warmroute.api.surface_stream import SurfaceRelay, SurfaceStream
from warmroute.api.wire_errors import anthropic_error_response, anthropic_sse_error
from warmroute.errors import WarmrouteError
from warmroute.gateway import engine_calls
from warmroute.gateway.auth import Authenticator
from warmroute.gateway.conversations import Conversations
from warmroute.gateway.engine_calls import Done
from warmroute.gateway.features import routing_key
from warmroute.gateway.metering import Meter
from warmroute.gateway.proxy import ENGINE_HEADER
from warmroute.gateway.stream_meter import SurfaceStreamMeter
from warmroute.sse import typed_event

SURFACE = "messages"


def authorization(request: Request) -> str | None:
    """`Authorization`, else `x-api-key` (the Anthropic SDKs' header) as a bearer token."""
    header = request.headers.get("authorization")
    if header:
        return header
    key = request.headers.get("x-api-key")
    return f"Bearer {key}" if key else None


class MessagesService:
    def __init__(self, conversations: Conversations, meter: Meter, auth: Authenticator,
                 max_body_bytes: int) -> None:
        self.conversations = conversations
        self.meter = meter
        self.auth = auth
        self.max_body_bytes = max_body_bytes

    async def create(self, request: Request) -> Response:
        caller = await self.auth.caller(authorization(request))
        await self.meter.admit(caller)
        raw = await read_json_object(request, self.max_body_bytes)
        body = wire.parse_messages_body(raw)
        messages = wire.conversation(body)
        key = routing_key(request.headers, raw)
        turn = await self.conversations.place(caller.team, key, [], messages, None, None,
                                              caller.cache_salt)
        engine_body = {
            **engine_calls.chat_body(body.model, turn.messages, wire.sampling(body), body.stream),
            **wire.prefill(turn.messages), "cache_salt": caller.cache_salt,
        }
        gw = self.conversations.gw
        if body.stream:
            stream = await engine_calls.open_stream(gw, turn.decision, engine_body)
            metering = SurfaceStreamMeter(self.meter, caller, SURFACE, stream)
            return SurfaceStream(SurfaceRelay(stream, MessageStreamEncoder(body.model), metering))
        answer = await engine_calls.complete(gw, turn.decision, engine_body)
        cost = await self.meter.record(caller, SURFACE, answer.model or body.model,
                                       answer.engine_id, answer.usage)
        obj = wire.message_object(wire.new_message_id(), body.model, answer.text,
                                  answer.finish_reason, answer.usage, cost)
        return json_response(obj, {ENGINE_HEADER: answer.engine_id})


class MessageStreamEncoder:
    """A message's streamed events (`SurfaceEncoder`), in Anthropic's shapes."""

    def __init__(self, model: str) -> None:
        self.events = wire.MessageEvents(wire.new_message_id(), model)

    def opening(self) -> bytes:
        return b"".join(map(typed_event, self.events.opening()))

    def delta(self, text: str) -> bytes:
        return typed_event(self.events.delta(text))

    async def closing(self, done: Done, cost_in_usd_ticks: int) -> bytes:
        return b"".join(map(typed_event, self.events.closing(done.finish_reason, done.usage,
                                                          cost_in_usd_ticks)))

    def failure(self, exc: WarmrouteError) -> bytes:
        return anthropic_sse_error(exc)


def add_messages_routes(
    app: FastAPI, conversations: Conversations, meter: Meter, auth: Authenticator,
    max_body_bytes: int,
) -> None:
    """Served bare (`api/bare_asgi.py`) where the app allows it: every error is answered here,
    in Anthropic's shape."""
    service = MessagesService(conversations, meter, auth, max_body_bytes)

    @app.post("/v1/messages")
    async def create_message(request: Request) -> Response:
        try:
            return await service.create(request)
        except Exception as exc:  # every error in Anthropic's shape (unexpected ones logged)
            return anthropic_error_response(exc)

    serve_bare(app, "POST", "/v1/messages", BareHandler(create_message),
               conversations.gw.config.body_timeout_s)
