"""`/v1/responses` on the gateway: create (JSON or SSE), retrieve and delete stored responses.

A request is placed like any other (routing key: `x-grok-conv-id`, else `prompt_cache_key`);
with `previous_response_id` the history is rebuilt from the store and the request goes first
to the engine that produced that response, where the conversation's KV is cached
(`api/conversations.py`, shared with the gRPC API).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from warmroute.api.bare_asgi import BareHandler, serve_bare
from warmroute.api.compaction_app import compaction_opener, drops_history
from warmroute.api.json_body import json_response, read_json_object
from warmroute.api.responses import (
    ResponseDraft,
    ResponseEvents,
    ResponsesBody,
    input_messages,
    parse_responses_body,
)
from warmroute.api.surface_stream import SurfaceRelay, SurfaceStream
from warmroute.api.wire_errors import sse_error_event
from warmroute.errors import NotFound, WarmrouteError
from warmroute.gateway import engine_calls
from warmroute.gateway.auth import Authenticator, Caller
from warmroute.gateway.compaction import Compactor
from warmroute.gateway.conversations import Conversations, Turn
from warmroute.gateway.engine_calls import Done
from warmroute.gateway.features import routing_key
from warmroute.gateway.metering import Meter
from warmroute.gateway.proxy import ENGINE_HEADER
from warmroute.gateway.stream_meter import SurfaceStreamMeter
from warmroute.gateway.streaming import Streaming
from warmroute.sse import typed_event
from warmroute.types import ChatMessage, SamplingParams


class ResponsesService:
    def __init__(
        self, conversations: Conversations, meter: Meter, compactor: Compactor | None = None
    ) -> None:
        self.conversations = conversations
        self.meter = meter
        self.compactor = compactor
        self.store = conversations.store
        self.clock = conversations.clock

    def new_messages(self, body: ResponsesBody, caller: Caller) -> list[ChatMessage]:
        """The turn's new messages: `instructions`, then `input` (compaction items opened)."""
        opener = compaction_opener(self.compactor, caller.team) if self.compactor else None
        new = input_messages(body.input, opener)
        if body.instructions is not None:
            new = [ChatMessage("system", body.instructions), *new]
        return new

    async def resolve(
        self, request: Request, raw: dict[str, Any], body: ResponsesBody, caller: Caller
    ) -> Turn:
        new = self.new_messages(body, caller)
        key = routing_key(request.headers, raw)
        previous = None if drops_history(body.input) else body.previous_response_id
        return await self.conversations.plan(caller.team, key, new, previous, caller.cache_salt)

    @staticmethod
    def engine_body(
        body: ResponsesBody, turn: Turn, caller: Caller, stream: bool
    ) -> dict[str, Any]:
        sampling = SamplingParams(
            max_tokens=body.max_output_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
        )
        chat = engine_calls.chat_body(body.model, turn.messages, sampling, stream)
        return {**chat, "cache_salt": caller.cache_salt}

    async def save(
        self, turn: Turn, draft: ResponseDraft, engine_id: str, text: str, obj: dict[str, Any]
    ) -> None:
        if draft.body.store:
            await self.conversations.save(
                turn, draft.response_id, draft.model, engine_id, text, obj
            )

    async def create(self, request: Request, raw: dict[str, Any], caller: Caller) -> Response:
        body = parse_responses_body(raw)
        turn = await self.resolve(request, raw, body, caller)
        gw = self.conversations.gw
        if body.stream:
            upstream = self.engine_body(body, turn, caller, True)
            stream = await engine_calls.open_stream(gw, turn.decision, upstream)
            encoder = ResponseStreamEncoder(self, turn, ResponseDraft(body, body.model or ""),
                                            stream)
            metering = SurfaceStreamMeter(self.meter, caller, "responses", stream)
            return SurfaceStream(SurfaceRelay(stream, encoder, metering))
        upstream = self.engine_body(body, turn, caller, False)
        answer = await engine_calls.complete(gw, turn.decision, upstream)
        draft = ResponseDraft(body, body.model or answer.model)
        model = answer.model or draft.model  # priced as the model the engine served
        obj = draft.object(answer.text, answer.finish_reason, answer.usage,
                           self.meter.cost(model, answer.usage))
        await self.save(turn, draft, answer.engine_id, answer.text, obj)  # a 503 is not billed
        await self.meter.record(caller, "responses", model, answer.engine_id, answer.usage)
        return json_response(obj, {ENGINE_HEADER: answer.engine_id})

    async def get(self, response_id: str, owner: str) -> dict[str, Any]:
        stored = await self.store().responses.get(response_id, owner, self.clock())
        if stored is None:
            raise NotFound(f"Response {response_id!r} was not found")
        return dict(stored.response)

    async def delete(self, response_id: str, owner: str) -> dict[str, Any]:
        if not await self.store().responses.delete(response_id, owner):
            raise NotFound(f"Response {response_id!r} was not found")
        return {"id": response_id, "object": "response", "deleted": True}


class ResponseStreamEncoder:
    """A response's streamed events (`SurfaceEncoder`): xAI's Responses events, the
    completed response stored when asked before its last events leave."""

    def __init__(self, service: ResponsesService, turn: Turn, draft: ResponseDraft,
                 stream: Streaming) -> None:
        self.service, self.turn, self.draft, self.stream = service, turn, draft, stream
        self.events = ResponseEvents(draft)

    def opening(self) -> bytes:
        return b"".join(map(typed_event, self.events.opening()))

    def delta(self, text: str) -> bytes:
        return typed_event(self.events.delta(text))

    async def closing(self, done: Done, cost_in_usd_ticks: int) -> bytes:
        closing = list(self.events.closing(done.finish_reason, done.usage, cost_in_usd_ticks))
        await self.service.save(self.turn, self.draft, self.stream.engine_id,
                                "".join(self.events.text), closing[-1]["response"])
        return b"".join(map(typed_event, closing))

    def failure(self, exc: WarmrouteError) -> bytes:
        return sse_error_event(exc)


def add_responses_routes(
    app: FastAPI, service: ResponsesService, auth: Authenticator, max_body_bytes: int
) -> None:
    """Creating a response is served bare (`api/bare_asgi.py`) where the app allows it."""

    async def create(request: Request) -> Response:
        caller = await auth.caller(request.headers.get("authorization"))
        await service.meter.admit(caller)
        raw = await read_json_object(request, max_body_bytes)
        return await service.create(request, raw, caller)

    @app.post("/v1/responses")
    async def create_response(request: Request) -> Response:
        return await create(request)

    serve_bare(app, "POST", "/v1/responses", BareHandler(create),
               service.conversations.gw.config.body_timeout_s)

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str, request: Request) -> dict[str, Any]:
        caller = await auth.caller(request.headers.get("authorization"))
        return await service.get(response_id, caller.team)

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
        caller = await auth.caller(request.headers.get("authorization"))
        return await service.delete(response_id, caller.team)
