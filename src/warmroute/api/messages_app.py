"""`POST /v1/messages` on the gateway: Anthropic's Messages API, placed, metered and priced like
every other surface, answered (errors included) in Anthropic's shapes.

The key comes from `x-api-key` (what the Anthropic SDKs send) or `Authorization: Bearer`; the
routing key from `x-grok-conv-id` (or a `prompt_cache_key` in the body). A stateless surface:
each request carries its whole conversation, which `Conversations.place` puts where its prefix
is warm. The answer carries `x-warmroute-engine`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from warmroute.api import messages as wire
from warmroute.api.json_body import read_json_object
from warmroute.api.sse import SSE_HEADERS, SSE_MEDIA_TYPE, ClosingStream
from warmroute.api.wire_errors import anthropic_error_response, anthropic_sse_error
from warmroute.errors import WarmrouteError
from warmroute.gateway import engine_calls
from warmroute.gateway.auth import Authenticator, Caller
from warmroute.gateway.conversations import Conversations, Turn
from warmroute.gateway.features import routing_key
from warmroute.gateway.metering import Meter
from warmroute.gateway.proxy import ENGINE_HEADER, Streaming
from warmroute.gateway.stream_meter import SurfaceStreamMeter

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
            return ClosingStream(
                self.events(turn, body.model, stream, caller), stream.aclose,
                media_type=SSE_MEDIA_TYPE, headers={**SSE_HEADERS, ENGINE_HEADER: stream.engine_id},
            )
        answer = await engine_calls.complete(gw, turn.decision, engine_body)
        cost = await self.meter.record(caller, SURFACE, answer.model or body.model,
                                       answer.engine_id, answer.usage)
        obj = wire.message_object(wire.new_message_id(), body.model, answer.text,
                                  answer.finish_reason, answer.usage, cost)
        return JSONResponse(obj, headers={ENGINE_HEADER: answer.engine_id})

    async def events(
        self, turn: Turn, model: str, stream: Streaming, caller: Caller
    ) -> AsyncIterator[bytes]:
        events = wire.MessageEvents(wire.new_message_id(), model)
        for event in events.opening():
            yield wire.sse(event)
        metering = SurfaceStreamMeter(self.meter, caller, SURFACE, stream)
        try:
            async for item in engine_calls.stream_events(stream):
                if isinstance(item, engine_calls.TextDelta):
                    yield wire.sse(events.delta(item.text))
                    continue
                cost = await metering.done(item.usage)
                for event in events.closing(item.finish_reason, item.usage, cost):
                    yield wire.sse(event)
        except WarmrouteError as exc:
            yield anthropic_sse_error(exc)
        finally:
            await metering.cut_off()


def add_messages_routes(
    app: FastAPI, conversations: Conversations, meter: Meter, auth: Authenticator,
    max_body_bytes: int,
) -> None:
    service = MessagesService(conversations, meter, auth, max_body_bytes)

    @app.post("/v1/messages")
    async def create_message(request: Request) -> Response:
        try:
            return await service.create(request)
        except Exception as exc:  # every error in Anthropic's shape (unexpected ones logged)
            return anthropic_error_response(exc)
