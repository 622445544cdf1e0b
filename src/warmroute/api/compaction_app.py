"""`POST /v1/responses/compact`, and compaction items on the way back in (Responses input).

The answer is a `response.compaction` object whose output is one item
`{"type": "compaction", "id": "cmp_…", "encrypted_content": …}`; a later request that carries
that item in its input gets, in its place, what the compaction stands for
(`gateway/compaction.py`), and the items before it (and any `previous_response_id` history)
are dropped. An item that is not this deployment's, or not the caller's team's, is a 400.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from warmroute.api.chat_completions import describe_validation_error
from warmroute.api.json_body import read_json_object
from warmroute.api.responses import CompactionOpener, input_messages, usage_object
from warmroute.errors import InvalidRequest
from warmroute.gateway.auth import Authenticator, Caller
from warmroute.gateway.compaction import Compacted, Compactor
from warmroute.gateway.conversations import Conversations
from warmroute.gateway.features import routing_key
from warmroute.gateway.proxy import ENGINE_HEADER
from warmroute.types import ChatMessage


class CompactBody(BaseModel):
    """What `/v1/responses/compact` reads; other fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    prompt_cache_key: str | None = None


def parse_compact_body(raw: dict[str, Any]) -> CompactBody:
    try:
        body = CompactBody.model_validate(raw)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc)) from exc
    if body.input is None and body.previous_response_id is None:
        raise InvalidRequest("input is required (or previous_response_id)")
    if body.instructions is not None and body.previous_response_id is not None:
        raise InvalidRequest("instructions cannot be used with previous_response_id")
    return body


def compaction_opener(compactor: Compactor, team: str) -> CompactionOpener:
    """Opens a Responses input item of type `compaction` into the messages it stands for."""

    def open_item(item: dict[str, Any], where: str) -> list[ChatMessage]:
        content, item_id = item.get("encrypted_content"), item.get("id")
        if not isinstance(content, str) or not content:
            raise InvalidRequest(f"{where}.encrypted_content must be a non-empty string")
        if item_id is not None and not isinstance(item_id, str):
            raise InvalidRequest(f"{where}.id must be a string")
        try:
            return compactor.open(team, content, item_id).messages()
        except InvalidRequest as exc:
            raise InvalidRequest(f"{where}: {exc.message}") from exc

    return open_item


def drops_history(input_: object) -> bool:
    """Whether `input` carries a compaction item (which replaces any earlier history)."""
    return isinstance(input_, list) and any(
        isinstance(item, dict) and item.get("type") == "compaction" for item in input_
    )


def compaction_item(compacted: Compacted) -> dict[str, Any]:
    return {"type": "compaction", "id": compacted.compaction.id,
            "encrypted_content": compacted.encrypted_content}


def compacted_object(compacted: Compacted) -> dict[str, Any]:
    return {
        "id": compacted.compaction.id,
        "object": "response.compaction",
        "created_at": compacted.compaction.created_at,
        "model": compacted.compaction.model,
        "output": [compaction_item(compacted)],
        "dropped_message_count": compacted.compaction.dropped,
        "usage": usage_object(compacted.usage, compacted.cost_in_usd_ticks),
    }


async def history_of(
    conversations: Conversations, compactor: Compactor, body: CompactBody, caller: Caller
) -> tuple[list[ChatMessage], str | None]:
    """The conversation to compact, and the engine holding its KV when it is stored."""
    new = [] if body.input is None else input_messages(
        body.input, compaction_opener(compactor, caller.team))
    if body.instructions is not None:
        new = [ChatMessage("system", body.instructions), *new]
    if body.previous_response_id is None or drops_history(body.input):
        return new, None
    history, engine = await conversations.history(body.previous_response_id, caller.team)
    return [*history, *new], engine


def add_compaction_routes(
    app: FastAPI, conversations: Conversations, compactor: Compactor, auth: Authenticator,
    max_body_bytes: int,
) -> None:
    @app.post("/v1/responses/compact")
    async def compact(request: Request) -> Response:
        caller = await auth.caller(request.headers.get("authorization"))
        await compactor.meter.admit(caller)
        raw = await read_json_object(request, max_body_bytes)
        body = parse_compact_body(raw)
        history, engine = await history_of(conversations, compactor, body, caller)
        compacted = await compactor.compact(caller, routing_key(request.headers, raw), history,
                                            engine, body.model, "responses.compact")
        return JSONResponse(compacted_object(compacted),
                            headers={ENGINE_HEADER: compacted.engine_id})

