"""`/v1/responses` on the gateway: create (JSON or SSE), retrieve and delete stored responses.

A request is placed like any other (routing key: `x-grok-conv-id`, else `prompt_cache_key`);
with `previous_response_id` the history is rebuilt from the store and the request goes first
to the engine that produced that response, where the conversation's KV is cached.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from warmroute.api.json_body import read_json_object
from warmroute.api.responses import (
    ResponseDraft,
    ResponseEvents,
    ResponsesBody,
    conversation,
    input_messages,
    parse_responses_body,
)
from warmroute.api.sse import SSE_HEADERS, SSE_MEDIA_TYPE
from warmroute.api.wire_errors import sse_error_event
from warmroute.errors import NotFound, WarmrouteError
from warmroute.gateway import engine_calls
from warmroute.gateway.features import routing_key
from warmroute.gateway.policies import Decision, RequestFeatures
from warmroute.gateway.proxy import ENGINE_HEADER, Streaming
from warmroute.gateway.router import Gateway
from warmroute.store import Store, StoredResponse
from warmroute.types import ChatMessage, Role, SamplingParams

DEFAULT_OWNER = "default"


@dataclass
class Turn:
    """One Responses request, resolved: what to send, where, and how to store it."""

    body: ResponsesBody
    messages: list[ChatMessage]
    new_messages: list[ChatMessage]
    decision: Decision
    owner: str


class ResponsesService:
    def __init__(
        self,
        gateway: Gateway,
        store: Callable[[], Store],
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gw = gateway
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock

    async def resolve(self, request: Request, raw: dict[str, Any], owner: str) -> Turn:
        body = parse_responses_body(raw)
        history: list[ChatMessage] = []
        previous_engine: str | None = None
        if body.previous_response_id is not None:
            now = self.clock()
            previous = await self.store().responses.get(body.previous_response_id, owner, now)
            items = await self.store().responses.history(body.previous_response_id, owner, now)
            if previous is None or items is None:
                raise NotFound(f"Response {body.previous_response_id!r} was not found")
            history = [stored_message(item) for item in items]
            previous_engine = previous.engine_id
        messages = conversation(body, history)
        new = messages if body.previous_response_id is None else input_messages(body.input)
        decision = self.gw.route(RequestFeatures(key=routing_key(request.headers, raw)))
        return Turn(body, messages, new, prefer(decision, previous_engine, self.gw), owner)

    def engine_body(self, turn: Turn, stream: bool) -> dict[str, Any]:
        body = turn.body
        sampling = SamplingParams(
            max_tokens=body.max_output_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
        )
        return engine_calls.chat_body(body.model, turn.messages, sampling, stream)

    async def save(
        self, turn: Turn, draft: ResponseDraft, engine_id: str, text: str, obj: dict[str, Any]
    ) -> None:
        if not turn.body.store:
            return
        now = self.clock()
        await self.store().responses.put(
            StoredResponse(
                id=draft.response_id,
                owner=turn.owner,
                created_at=now,
                expires_at=now + self.ttl_s,
                model=draft.model,
                engine_id=engine_id,
                previous_response_id=turn.body.previous_response_id,
                input=tuple({"role": m.role, "content": m.content} for m in turn.new_messages),
                output=({"role": "assistant", "content": text},),
                response=obj,
            )
        )

    async def create(self, request: Request, raw: dict[str, Any], owner: str) -> Response:
        turn = await self.resolve(request, raw, owner)
        if turn.body.stream:
            stream = await engine_calls.open_stream(
                self.gw, turn.decision, self.engine_body(turn, True)
            )
            draft = ResponseDraft(turn.body, turn.body.model or "")
            headers = {**SSE_HEADERS, ENGINE_HEADER: stream.engine_id}
            return ClosingStream(
                self.events(turn, draft, stream), stream.aclose, media_type=SSE_MEDIA_TYPE,
                headers=headers,
            )
        answer = await engine_calls.complete(self.gw, turn.decision, self.engine_body(turn, False))
        draft = ResponseDraft(turn.body, turn.body.model or answer.model)
        obj = draft.object(answer.text, answer.finish_reason, answer.usage)
        await self.save(turn, draft, answer.engine_id, answer.text, obj)
        return JSONResponse(obj, headers={ENGINE_HEADER: answer.engine_id})

    async def events(
        self, turn: Turn, draft: ResponseDraft, stream: Streaming
    ) -> AsyncIterator[bytes]:
        events = ResponseEvents(draft)
        for event in events.opening():
            yield sse_event(event)
        try:
            async for item in engine_calls.stream_events(stream):
                if isinstance(item, engine_calls.TextDelta):
                    yield sse_event(events.delta(item.text))
                    continue
                closing = list(events.closing(item.finish_reason, item.usage))
                await self.save(turn, draft, stream.engine_id, "".join(events.text),
                                closing[-1]["response"])
                for event in closing:
                    yield sse_event(event)
        except WarmrouteError as exc:
            yield sse_error_event(exc)

    async def get(self, response_id: str, owner: str) -> dict[str, Any]:
        stored = await self.store().responses.get(response_id, owner, self.clock())
        if stored is None:
            raise NotFound(f"Response {response_id!r} was not found")
        return dict(stored.response)

    async def delete(self, response_id: str, owner: str) -> dict[str, Any]:
        if not await self.store().responses.delete(response_id, owner):
            raise NotFound(f"Response {response_id!r} was not found")
        return {"id": response_id, "object": "response", "deleted": True}


def prefer(decision: Decision, engine_id: str | None, gw: Gateway) -> Decision:
    """Put the engine that holds the conversation's KV first while it is healthy."""
    if engine_id is None or engine_id not in gw.membership.healthy_ids():
        return decision
    rest = tuple(e for e in decision.ranked if e != engine_id)
    return Decision((engine_id, *rest), decision.reason)


def stored_message(item: Any) -> ChatMessage:
    role: Role = item["role"]
    return ChatMessage(role, str(item["content"]))


def sse_event(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


class ClosingStream(StreamingResponse):
    """A streaming response that always runs `close` when it ends, however it ends."""

    def __init__(
        self, content: AsyncIterator[bytes], close: Callable[[], Any], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self.close = close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self.close()


def add_responses_routes(app: FastAPI, service: ResponsesService, max_body_bytes: int) -> None:
    @app.post("/v1/responses")
    async def create_response(request: Request) -> Response:
        raw = await read_json_object(request, max_body_bytes)
        return await service.create(request, raw, DEFAULT_OWNER)

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str) -> dict[str, Any]:
        return await service.get(response_id, DEFAULT_OWNER)

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str) -> dict[str, Any]:
        return await service.delete(response_id, DEFAULT_OWNER)

