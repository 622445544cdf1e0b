"""The gateway's OpenAPI document: FastAPI's, completed with what thin routes cannot declare —
the JSON bodies of the POST routes (from the same pydantic models that parse them) and xAI's
error envelope for every error status a route can answer."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from warmroute.api.chat_completions import ChatCompletionBody
from warmroute.api.responses import ResponsesBody

REF = "#/components/schemas/{model}"
ENVELOPE = {
    "type": "object",
    "properties": {"code": {"type": "string"}, "error": {"type": "string"}},
    "required": ["code", "error"],
}
ERRORS = {
    "400": "Invalid argument (also a wrong API key)",
    "401": "Missing API key",
    "403": "Revoked API key, or a tenant's key on an admin route",
    "404": "Not found",
    "413": "Body too large",
    "415": "Not JSON",
    "429": "Rate limited",
    "503": "No engine available",
}
BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("/v1/chat/completions", "post"): ChatCompletionBody,
    ("/v1/responses", "post"): ResponsesBody,
}
STREAMED = {
    "application/json": {"schema": {"type": "object"}},
    "text/event-stream": {"schema": {  # with "stream": true; each event as schemathesis reads it
        "type": "object",
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
        "required": ["data"],
    }},
}
OPEN_ROUTES = {"/health", "/openapi.json"}


def body_schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def gateway_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(title=app.title, version="1", routes=app.routes)
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ENVELOPE
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            model = BODIES.get((path, method))
            responses = operation.setdefault("responses", {})
            if model is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": body_schema(model, components)}},
                }
                ok = responses.setdefault("200", {"description": "The answer"})
                ok.setdefault("content", {}).update(STREAMED)
            responses.pop("422", None)  # bodies are read by hand: bad ones answer 400
            if path == "/metrics":
                responses["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
            if path == "/health":
                responses.setdefault("503", {"description": "No healthy engine",
                                             "content": {"application/json": {"schema": {}}}})
            if path in OPEN_ROUTES:
                continue
            error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            for status, description in ERRORS.items():
                responses.setdefault(status, {"description": description, "content": error})
    app.openapi_schema = document
    return document
