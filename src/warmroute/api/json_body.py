"""Reading a JSON request body with xAI's answers for what is wrong with it (415, 413, 400)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from warmroute.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

DEFAULT_MAX_BODY_BYTES = 20 * 2**20


async def read_json_object(
    request: Request, max_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the body exceeds the limit of {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"the body exceeds the limit of {max_bytes} bytes")
    if not body:
        raise UnsupportedMediaType("the body is empty; send a JSON object")
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise InvalidRequest("the body must be a JSON object")
    return parsed
