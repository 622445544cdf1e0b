"""`/v1/responses` on the gateway: create (JSON or SSE), retrieve and delete stored responses.

A request is placed like any other (routing key: `x-grok-conv-id`, else `prompt_cache_key`);
with `previous_response_id` the history is rebuilt from the store and the request goes first
to the engine that produced that response, where the conversation's KV is cached
(`api/conversations.py`, shared with the gRPC API).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from warmroute.api.compaction_app import compaction_opener, drops_history
from warmroute.api.json_body import read_json_object
from warmroute.api.responses import (
    ResponseDraft,
    ResponseEvents,
    ResponsesBody,
    input_messages,
    parse_responses_body,
)
from warmroute.api.sse import SSE_HEADERS, SSE_MEDIA_TYPE, ClosingStream
from warmroute.api.wire_errors import sse_error_event
from warmroute.errors import NotFound, WarmrouteError
from warmroute.gateway import engine_calls
from warmroute.gateway.auth import Authenticator, Caller
from warmroute.gateway.compaction import Compactor
from warmroute.gateway.conversations import Conversations, Turn
from warmroute.gateway.features import routing_key
from warmroute.gateway.metering import Meter
from warmroute.gateway.proxy import ENGINE_HEADER, Streaming
from warmroute.gateway.stream_meter import SurfaceStreamMeter
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
            draft = ResponseDraft(body, body.model or "")
            headers = {**SSE_HEADERS, ENGINE_HEADER: stream.engine_id}
            return ClosingStream(
                self.events(turn, draft, stream, caller), stream.aclose,
                media_type=SSE_MEDIA_TYPE, headers=headers,
            )
        upstream = self.engine_body(body, turn, caller, False)
        answer = await engine_calls.complete(gw, turn.decision, upstream)
        draft = ResponseDraft(body, body.model or answer.model)
        model = answer.model or draft.model  # priced as the model the engine served
        obj = draft.object(answer.text, answer.finish_reason, answer.usage,
                           self.meter.cost(model, answer.usage))
        await self.save(turn, draft, answer.engine_id, answer.text, obj)  # a 503 is not billed
        await self.meter.record(caller, "responses", model, answer.engine_id, answer.usage)
        return JSONResponse(obj, headers={ENGINE_HEADER: answer.engine_id})

    async def events(
        self, turn: Turn, draft: ResponseDraft, stream: Streaming, caller: Caller
    ) -> AsyncIterator[bytes]:
        events = ResponseEvents(draft)
        for event in events.opening():
            yield sse_event(event)
        metering = SurfaceStreamMeter(self.meter, caller, "responses", stream)
        try:
            async for item in engine_calls.stream_events(stream):
                if isinstance(item, engine_calls.TextDelta):
                    yield sse_event(events.delta(item.text))
                    continue
                cost = await metering.done(item.usage)
                closing = list(events.closing(item.finish_reason, item.usage, cost))
                await self.save(turn, draft, stream.engine_id, "".join(events.text),
                                closing[-1]["response"])
                for event in closing:
                    yield sse_event(event)
        except WarmrouteError as exc:
            yield sse_error_event(exc)
        finally:
            await metering.cut_off()

    async def get(self, response_id: str, owner: str) -> dict[str, Any]:
        stored = await self.store().responses.get(response_id, owner, self.clock())
        if stored is None:
            raise NotFound(f"Response {response_id!r} was not found")
        return dict(stored.response)

    async def delete(self, response_id: str, owner: str) -> dict[str, Any]:
        if not await self.store().responses.delete(response_id, owner):
            raise NotFound(f"Response {response_id!r} was not found")
        return {"id": response_id, "object": "response", "deleted": True}


def sse_event(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def add_responses_routes(
    app: FastAPI, service: ResponsesService, auth: Authenticator, max_body_bytes: int
) -> None:
    @app.post("/v1/responses")
    async def create_response(request: Request) -> Response:
        caller = await auth.caller(request.headers.get("authorization"))
        await service.meter.admit(caller)
        raw = await read_json_object(request, max_body_bytes)
        return await service.create(request, raw, caller)

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str, request: Request) -> dict[str, Any]:
        caller = await auth.caller(request.headers.get("authorization"))
        return await service.get(response_id, caller.team)

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
        caller = await auth.caller(request.headers.get("authorization"))
        return await service.delete(response_id, caller.team)

