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
    RunInterrupted,
    StoreUnavailable,
    UnsupportedMediaType,
    WarmrouteError,
)
from warmroute.sse import sse_data, typed_event

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
    # A 4xx, so a gateway answers it as is: never retried on another engine, never an ejection;
    # on gRPC as a 422 always is: the request's fault, not the server's.
    RequestFailed: WireError(422, "The request could not be processed", "INVALID_ARGUMENT"),
    EngineUnavailable: WireError(503, "The service is currently unavailable", "UNAVAILABLE"),
    # Not UNAVAILABLE: the SDK would poll on; the work is gone and must be started again.
    RunInterrupted: WireError(503, "The service is currently unavailable", "ABORTED"),
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
    return sse_data(error_body(exc))


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


# Anthropic's error shape and statuses, for the Messages surface (`/v1/messages`).
ANTHROPIC_ERRORS: dict[type[WarmrouteError], tuple[int, str]] = {
    InvalidRequest: (400, "invalid_request_error"),
    UnsupportedMediaType: (400, "invalid_request_error"),
    PayloadTooLarge: (413, "request_too_large"),
    AuthError: (401, "authentication_error"),
    PermissionDenied: (403, "permission_error"),
    NotFound: (404, "not_found_error"),
    RequestTimeout: (408, "timeout_error"),
    RateLimited: (429, "rate_limit_error"),
    RequestFailed: (500, "api_error"),
    EngineUnavailable: (529, "overloaded_error"),
    StoreUnavailable: (500, "api_error"),
}


def anthropic_status(exc: BaseException) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in ANTHROPIC_ERRORS:
            return ANTHROPIC_ERRORS[cls]
    return 500, "api_error"


def anthropic_error_body(exc: BaseException) -> dict[str, object]:
    message = exc.message if isinstance(exc, WarmrouteError) else "internal error"
    return {"type": "error", "error": {"type": anthropic_status(exc)[1], "message": message}}


def anthropic_error_response(exc: BaseException) -> JSONResponse:
    if not isinstance(exc, WarmrouteError):
        log.error("unhandled error on /v1/messages", exc_info=exc)
    response = error_response(exc)  # for its retry-after
    return JSONResponse(anthropic_error_body(exc), status_code=anthropic_status(exc)[0],
                        headers={k: v for k, v in response.headers.items() if k == "retry-after"})


def anthropic_sse_error(exc: BaseException) -> bytes:
    """An error inside a Messages stream that has already started."""
    return typed_event(anthropic_error_body(exc))


def socket_error_event(exc: BaseException) -> dict[str, object]:
    """An error on a Responses WebSocket, as the `error` event of a Responses stream (the socket
    stays open): xAI's code text, the message, and the HTTP status the request would have had."""
    wire = wire_error_for(exc)
    message = exc.message if isinstance(exc, WarmrouteError) else "internal error"
    return {"type": "error", "status": wire.status, "code": wire.code, "message": message,
            "param": None}


def deferred_failure(exc: WarmrouteError) -> dict[str, object]:
    """What a failed deferred request stores: its gRPC code (read by gRPC), HTTP status and
    envelope code (read by REST), and message."""
    wire = wire_error_for(exc)
    return {"code": wire.grpc_code, "status": wire.status, "http_code": wire.code,
            "message": exc.message}


def deferred_error_response(error: dict[str, object]) -> JSONResponse:
    """A stored deferred failure answered on REST, in xAI's envelope with its status."""
    status = error.get("status")
    return JSONResponse(
        {"code": str(error.get("http_code") or INTERNAL.code),
         "error": str(error.get("message") or "the deferred request failed")},
        status_code=status if isinstance(status, int) else INTERNAL.status,
    )


def relayed_failure(status: int, body: bytes) -> dict[str, object]:
    """An engine's error answer (xAI's envelope) as a deferred request stores it, so that REST
    answers it as the engine did and gRPC with the matching code."""
    try:
        envelope = json.loads(body)
    except ValueError:
        envelope = None
    if not isinstance(envelope, dict):
        envelope = {"error": body.decode(errors="replace")[:1000]}
    grpc_code = next((w.grpc_code for w in WIRE_ERRORS.values() if w.status == status),
                     INTERNAL.grpc_code)
    return {"code": grpc_code, "status": status,
            "http_code": str(envelope.get("code") or INTERNAL.code),
            "message": str(envelope.get("error") or "the deferred request failed")}
