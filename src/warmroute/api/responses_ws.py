"""Responses over a WebSocket (`/v1/responses` upgraded), as xAI's WebSocket mode serves it.

The client sends `{"type": "response.create", …}` messages (the Responses body without
`stream`/`background`) and receives, for each, the events of a Responses stream. One response
at a time per socket. The chain lives on the socket: a `previous_response_id` made on it is
found there (so `store: false` chains work), one made elsewhere in the store. The socket keeps
its conversation on its engine: a turn without a chain goes first to the engine of the socket's
last turn. `generate: false` pre-warms: the engine computes the prompt (filling its prefix
cache) and the answer is a completed response with no output, its usage, and an id to chain
from on this socket. Closing the socket cancels its in-flight generation (the engine stops the
sequence and frees its slot). Bad input gets an `error` event; the socket stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.responses import JSONResponse

from warmroute.api.compaction_app import drops_history
from warmroute.api.json_body import parse_json_object
from warmroute.api.responses import (
    ResponseDraft,
    ResponseEvents,
    ResponsesBody,
    parse_responses_body,
)
from warmroute.api.responses_app import ResponsesService
from warmroute.api.wire_errors import error_body, socket_error_event, wire_error_for
from warmroute.errors import InvalidRequest, WarmrouteError
from warmroute.gateway import engine_calls
from warmroute.gateway.auth import Authenticator, Caller
from warmroute.gateway.conversations import Turn
from warmroute.gateway.features import routing_key
from warmroute.gateway.stream_meter import SurfaceStreamMeter
from warmroute.types import ChatMessage, SamplingParams, Usage

log = logging.getLogger(__name__)

SURFACE = "responses.ws"
REMEMBERED = 64  # responses per socket kept for chaining, most recent first
BUSY = "a response is already in progress on this socket; send the next response.create after it"


@dataclass(frozen=True)
class Made:
    """A response made on this socket: its whole conversation, where its KV is, whether the
    store holds it (a chain from it can then be stored too)."""

    messages: list[ChatMessage]
    engine_id: str
    stored: bool


class SocketChain:
    def __init__(self) -> None:
        self.made: OrderedDict[str, Made] = OrderedDict()
        self.engine_id: str | None = None

    def remember(self, response_id: str, made: Made) -> None:
        self.made[response_id] = made
        self.engine_id = made.engine_id
        while len(self.made) > REMEMBERED:
            self.made.popitem(last=False)


class ResponsesSocket:
    def __init__(self, service: ResponsesService, auth: Authenticator) -> None:
        self.service = service
        self.auth = auth

    async def serve(self, ws: WebSocket) -> None:
        try:
            await self.auth.caller(ws.headers.get("authorization"))
        except WarmrouteError as exc:  # refused before the upgrade, in xAI's envelope
            await ws.send_denial_response(
                JSONResponse(error_body(exc), status_code=wire_error_for(exc).status))
            return
        await ws.accept()
        lock, chain = asyncio.Lock(), SocketChain()
        current: asyncio.Task[None] | None = None
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text") or (message.get("bytes") or b"").decode(
                    errors="replace")
                if current is not None and not current.done():
                    await send(ws, lock, socket_error_event(InvalidRequest(BUSY)))
                    continue
                current = asyncio.create_task(self.turn(ws, lock, chain, text))
        finally:
            if current is not None and not current.done():
                current.cancel()  # the client left: stop its generation, free the engine
                await asyncio.gather(current, return_exceptions=True)

    async def turn(self, ws: WebSocket, lock: asyncio.Lock, chain: SocketChain,
                   text: str) -> None:
        try:  # the key again: one revoked meanwhile stops working on open sockets too
            caller = await self.auth.caller(ws.headers.get("authorization"))
            raw = parse_json_object(text.encode())
            generate = create_fields(raw)
            body = parse_responses_body(raw)
            await self.service.meter.admit(caller)
            turn = await self.plan(ws, raw, body, chain, caller)
            if generate:
                await self.generate(ws, lock, chain, caller, body, turn)
            else:
                await self.warm(ws, lock, chain, caller, body, turn)
        except WarmrouteError as exc:
            await send(ws, lock, socket_error_event(exc))
        except Exception as exc:  # answered as an internal error; the socket stays usable
            log.exception("a response.create on a WebSocket failed")
            await send(ws, lock, socket_error_event(exc))

    async def plan(self, ws: WebSocket, raw: dict[str, Any], body: ResponsesBody,
                   chain: SocketChain, caller: Caller) -> Turn:
        """The turn: chained from a response made on this socket, else from the store, else
        new (first to the socket's engine)."""
        new = self.service.new_messages(body, caller)
        key = routing_key(ws.headers, raw)
        previous = None if drops_history(body.input) else body.previous_response_id
        conversations = self.service.conversations
        made = chain.made.get(previous) if previous is not None else None
        if made is not None and made.stored:
            return await conversations.place(caller.team, key, made.messages, new,
                                             made.engine_id, previous, caller.cache_salt)
        if made is not None:  # a chain from an unstored response: stored, it starts anew
            return await conversations.place(caller.team, key, [], [*made.messages, *new],
                                             made.engine_id, None, caller.cache_salt)
        if previous is not None:
            return await conversations.plan(caller.team, key, new, previous, caller.cache_salt)
        return await conversations.place(caller.team, key, [], new, chain.engine_id, None,
                                         caller.cache_salt)

    async def generate(self, ws: WebSocket, lock: asyncio.Lock, chain: SocketChain,
                       caller: Caller, body: ResponsesBody, turn: Turn) -> None:
        gw = self.service.conversations.gw
        upstream = self.service.engine_body(body, turn, caller, True)
        stream = await engine_calls.open_stream(gw, turn.decision, upstream)
        metering = SurfaceStreamMeter(self.service.meter, caller, SURFACE, stream)
        try:
            draft = ResponseDraft(body, body.model or "")
            events = ResponseEvents(draft)
            for event in events.opening():
                await send(ws, lock, event)
            async for item in engine_calls.stream_events(stream):
                if isinstance(item, engine_calls.TextDelta):
                    await send(ws, lock, events.delta(item.text))
                    continue
                cost = await metering.done(item.usage)
                closing = list(events.closing(item.finish_reason, item.usage, cost))
                reply = "".join(events.text)
                await self.service.save(turn, draft, stream.engine_id, reply,
                                        closing[-1]["response"])
                chain.remember(draft.response_id, Made(
                    [*turn.messages, ChatMessage("assistant", reply)], stream.engine_id,
                    body.store))
                for event in closing:
                    await send(ws, lock, event)
        finally:
            await metering.cut_off()
            await stream.aclose()

    async def warm(self, ws: WebSocket, lock: asyncio.Lock, chain: SocketChain,
                   caller: Caller, body: ResponsesBody, turn: Turn) -> None:
        """Compute the prompt on its engine (one token sampled and dropped) and answer with a
        completed response without output; chainable on this socket, never stored."""
        gw = self.service.conversations.gw
        sampling = SamplingParams(max_tokens=1, temperature=0.0)
        upstream = {**engine_calls.chat_body(body.model, turn.messages, sampling, False),
                    "cache_salt": caller.cache_salt}
        answer = await engine_calls.complete(gw, turn.decision, upstream)
        usage = Usage(answer.usage.prompt_tokens, 0, answer.usage.cached_tokens)
        draft = ResponseDraft(body, body.model or answer.model)
        cost = await self.service.meter.record(caller, SURFACE, answer.model or draft.model,
                                               answer.engine_id, usage)
        final = {**draft.object("", "stop", usage, cost), "output": []}
        chain.remember(draft.response_id, Made(list(turn.messages), answer.engine_id, False))
        kinds = ("response.created", "response.in_progress", "response.completed")
        for number, (kind, response) in enumerate(zip(kinds, (draft.object(), draft.object(),
                                                              final), strict=True)):
            await send(ws, lock, {"type": kind, "sequence_number": number, "response": response})


def create_fields(raw: dict[str, Any]) -> bool:
    """Check and take the socket's own fields off a `response.create` message; returns
    `generate`."""
    if raw.pop("type", None) != "response.create":
        raise InvalidRequest("expected a message of type 'response.create'")
    raw.pop("stream", None)  # every response is streamed on the socket
    if raw.pop("background", False) not in (False, None):
        raise InvalidRequest("background is not supported on the WebSocket")
    generate = raw.pop("generate", True)
    if not isinstance(generate, bool):
        raise InvalidRequest("generate must be true or false")
    return generate


async def send(ws: WebSocket, lock: asyncio.Lock, event: dict[str, Any]) -> None:
    async with lock:
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):  # it closed
            await ws.send_text(json.dumps(event, separators=(",", ":")))


def add_responses_socket(app: FastAPI, service: ResponsesService, auth: Authenticator) -> None:
    socket = ResponsesSocket(service, auth)

    @app.websocket("/v1/responses")
    async def responses_socket(ws: WebSocket) -> None:
        await socket.serve(ws)
