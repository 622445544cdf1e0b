"""`POST /v1/tokenize-text` → `{"token_ids": [{"token_id", "string_token", "token_bytes"}]}`.

The served model's own tokenizer (`gateway/tokenizers.py`, the one gRPC `TokenizeText` uses),
so the ids are those the engine computes for the same text in a message; `token_bytes` are the
token's bytes as integers (joined, they are the text's UTF-8). Without `model`, the first model
the healthy engines serve. Rate limits apply (requests); nothing is generated, so no ledger row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request

from warmroute.api.chat_completions import describe_validation_error
from warmroute.api.json_body import read_json_object
from warmroute.errors import InvalidRequest
from warmroute.gateway.auth import Authenticator
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.metering import Meter
from warmroute.gateway.tokenizers import tokenize_served


class TokenizeBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str
    model: str | None = None
    user: str | None = None


def add_tokenize_routes(
    app: FastAPI, gw: Gateway, auth: Authenticator, meter: Meter,
    tokenizer_for: Callable[[str], Any],
) -> None:
    @app.post("/v1/tokenize-text")
    async def tokenize_text(request: Request) -> dict[str, Any]:
        await meter.admit(await auth.caller(request.headers.get("authorization")))
        try:
            body = TokenizeBody.model_validate(
                await read_json_object(request, gw.config.max_body_bytes))
        except ValidationError as exc:
            raise InvalidRequest(describe_validation_error(exc)) from exc
        _, pieces = await tokenize_served(await gw.models(), body.model, body.text,
                                          tokenizer_for)
        return {"token_ids": [{"token_id": p.token_id, "string_token": p.string_token,
                               "token_bytes": list(p.token_bytes)} for p in pieces]}
