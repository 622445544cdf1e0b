"""The only place where exceptions become wire errors: xAI's HTTP envelope and gRPC status codes.

xAI answers errors as `{"code": "<gRPC status text>", "error": "<message>"}` (not OpenAI's nested
object), with the HTTP status mapping of `reference/xai-api.md` §3.4.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from warmroute.errors import (
    AuthError,
    EngineUnavailable,
    InvalidApiKey,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    RequestFailed,
    RequestTimeout,
    StoreUnavailable,
    UnsupportedMediaType,
    WarmrouteError,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WireError:
    status: int
    code: str
    grpc_code: str


WIRE_ERRORS: dict[type[WarmrouteError], WireError] = {
    InvalidRequest: WireError(400, "Client specified an invalid argument", "INVALID_ARGUMENT"),
    UnsupportedMediaType: WireError(415, "Unsupported media type", "INVALID_ARGUMENT"),
    PayloadTooLarge: WireError(413, "Request entity too large", "RESOURCE_EXHAUSTED"),
    RequestTimeout: WireError(408, "Deadline expired before operation could complete",
                              "DEADLINE_EXCEEDED"),
    AuthError: WireError(
        401, "The request does not have valid authentication credentials", "UNAUTHENTICATED"
    ),
    InvalidApiKey: WireError(400, "Client specified an invalid argument", "UNAUTHENTICATED"),
    PermissionDenied: WireError(403, "The caller does not have permission", "PERMISSION_DENIED"),
    NotFound: WireError(404, "Some requested entity was not found", "NOT_FOUND"),
    RateLimited: WireError(429, "Some resource has been exhausted", "RESOURCE_EXHAUSTED"),
    # A 4xx, so a gateway answers it as is: never retried on another engine, never an ejection.
    RequestFailed: WireError(422, "The request could not be processed", "INTERNAL"),
    EngineUnavailable: WireError(503, "The service is currently unavailable", "UNAVAILABLE"),
    StoreUnavailable: WireError(503, "The service is currently unavailable", "UNAVAILABLE"),
}
INTERNAL = WireError(500, "Internal error", "INTERNAL")


def wire_error_for(exc: BaseException) -> WireError:
    for cls in type(exc).__mro__:
        if cls in WIRE_ERRORS:
            return WIRE_ERRORS[cls]
    return INTERNAL


def error_body(exc: BaseException) -> dict[str, str]:
    message = exc.message if isinstance(exc, WarmrouteError) else "internal error"
    return {"code": wire_error_for(exc).code, "error": message}


def error_response(exc: BaseException) -> JSONResponse:
    headers = {}
    retry_after = getattr(exc, "retry_after", None)  # RateLimited, EngineOverloaded, store
    if isinstance(exc, WarmrouteError) and isinstance(retry_after, int | float):
        headers["retry-after"] = str(max(1, round(retry_after)))
    return JSONResponse(error_body(exc), status_code=wire_error_for(exc).status, headers=headers)


def grpc_trailers(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of a gRPC error: `retry-after` where the HTTP answer has it."""
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, WarmrouteError) and isinstance(retry_after, int | float):
        return (("retry-after", str(max(1, round(retry_after)))),)
    return ()


def sse_error_event(exc: BaseException) -> bytes:
    """An error inside an SSE stream that has already started (status can no longer change)."""
    return b"data: " + json.dumps(error_body(exc)).encode() + b"\n\n"


async def handle_warmroute_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)


async def handle_unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 answers, in xAI's envelope."""
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", "") or "error"
    code = {404: "Some requested entity was not found", 405: "Method not allowed"}.get(
        status, "Client specified an invalid argument"
    )
    return JSONResponse({"code": code, "error": str(detail)}, status_code=status)
