"""The gateway's OpenAPI document: FastAPI's, completed with what thin routes cannot declare —
the JSON bodies of the POST routes (from the same pydantic models that parse them) and xAI's
error envelope for every error status a route can answer."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from warmroute.api.chat_completions import ChatCompletionBody
from warmroute.api.compaction_app import CompactBody
from warmroute.api.messages import MessagesBody
from warmroute.api.responses import ResponsesBody
from warmroute.api.tokenize_app import TokenizeBody

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
    "408": "The body did not arrive in time",
    "413": "Body too large",
    "415": "Not JSON",
    "422": "The engine failed this request alone (not retried elsewhere)",
    "429": "Rate limited",
    "503": "No engine available, or the store is unavailable (with retry-after)",
}
BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("/v1/chat/completions", "post"): ChatCompletionBody,
    ("/v1/responses", "post"): ResponsesBody,
    ("/v1/responses/compact", "post"): CompactBody,
    ("/v1/messages", "post"): MessagesBody,
    ("/v1/tokenize-text", "post"): TokenizeBody,
}
ANTHROPIC_ERROR = {
    "type": "object",
    "properties": {"type": {"type": "string"}, "error": {
        "type": "object",
        "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        "required": ["type", "message"],
    }},
    "required": ["type", "error"],
}
ANTHROPIC_ERRORS = {
    "400": "Invalid request", "401": "Missing or unknown API key", "403": "Revoked API key",
    "404": "Not found", "413": "Body too large", "429": "Rate limited",
    "500": "Internal error", "529": "No engine available",
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
    surface_extras(document.get("paths", {}), components)
    stored_response_links(document.get("paths", {}))
    app.openapi_schema = document
    return document


def surface_extras(paths: dict[str, Any], components: dict[str, Any]) -> None:
    """What some surfaces answer beyond the common case: Anthropic's errors on `/v1/messages`,
    202 for a deferred completion still running, `deferred` on Chat Completions."""
    components["AnthropicError"] = ANTHROPIC_ERROR
    messages = paths.get("/v1/messages", {}).get("post")
    if messages is not None:
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/AnthropicError"}}}
        kept = {k: v for k, v in messages["responses"].items() if k[0] not in "45"}
        messages["responses"] = {**kept, **{status: {"description": text, "content": error}
                                            for status, text in ANTHROPIC_ERRORS.items()}}
    deferred = paths.get("/v1/chat/deferred-completion/{request_id}", {}).get("get")
    if deferred is not None:
        deferred["responses"]["202"] = {"description": "Still running", "content": {
            "application/json": {"schema": {"type": "object"}}}}
    chat = components.get(ChatCompletionBody.__name__)
    if chat is not None:
        chat.get("properties", {}).pop("priority", None)  # the gateway's own to send
        chat.setdefault("properties", {})["deferred"] = {
            "type": "boolean", "default": False,
            "description": "Answer {request_id} at once; read the completion at "
                           "/v1/chat/deferred-completion/{request_id}"}


def stored_response_links(paths: dict[str, Any]) -> None:
    """OpenAPI links from a created response to reading and deleting it (`$response.body#/id`),
    which stateful clients and fuzzers follow."""
    created = paths.get("/v1/responses", {}).get("post")
    stored = paths.get("/v1/responses/{response_id}", {})
    if created is None or not stored:
        return
    ok = created["responses"].setdefault("200", {"description": "The answer"})
    ok.setdefault("content", {})["application/json"] = {"schema": {
        "type": "object", "properties": {"id": {"type": "string"}, "object": {"type": "string"}},
        "required": ["id", "object"]}}
    ok["links"] = {
        f"{method.capitalize()}Response": {
            "operationId": operation["operationId"],
            "parameters": {"response_id": "$response.body#/id"},
        }
        for method, operation in stored.items() if "operationId" in operation
    }
