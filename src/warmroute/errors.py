"""One exception tree for the whole project.

    WarmrouteError
    ├── InvalidRequest          bad input the caller can fix (400)
    │   └── ContextTooLong      prompt or max_tokens beyond the model's context (400)
    ├── UnsupportedMediaType    body is not application/json (415)
    ├── PayloadTooLarge         body over the configured limit (413)
    ├── RequestTimeout          the body did not arrive in time (408)
    ├── AuthError               missing credentials (401)
    │   └── InvalidApiKey       an API key that is not ours (400, as xAI answers it)
    ├── PermissionDenied        credentials valid but not allowed (403)
    │   └── ApiKeyRevoked       a revoked API key (403)
    ├── NotFound                unknown model, response or route (404)
    ├── RateLimited             a limit was hit (429)
    ├── RequestFailed           the engine failed computing this request alone (422)
    ├── EngineUnavailable       no engine can serve the request (503)
    │   ├── RunInterrupted      the gateway running a deferred request stopped (503, ABORTED)
    │   └── EngineOverloaded    an engine's wait queue is full; retry after a while (503)
    └── StoreUnavailable        the database cannot be reached or is too new (503)

Only `warmroute.api.wire_errors` turns these into HTTP envelopes or gRPC status codes.
"""

from __future__ import annotations


class WarmrouteError(Exception):
    """Base class; `message` is safe to show to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(WarmrouteError):
    """The request is malformed or asks for something impossible."""


class ContextTooLong(InvalidRequest):
    """The prompt, or prompt plus requested output, exceeds the model's context."""


class UnsupportedMediaType(WarmrouteError):
    """The body is empty or not declared as JSON."""


class PayloadTooLarge(WarmrouteError):
    """The body exceeds the configured size limit."""


class RequestTimeout(WarmrouteError):
    """The client did not send its whole body within the time allowed."""


class AuthError(WarmrouteError):
    """No credentials, or credentials that do not identify a caller."""


class InvalidApiKey(AuthError):
    """An API key that matches none of ours."""


class PermissionDenied(WarmrouteError):
    """The caller is known but may not do this."""


class ApiKeyRevoked(PermissionDenied):
    """The API key was revoked."""


class NotFound(WarmrouteError):
    """The named model, response or resource does not exist (for this caller)."""


class RateLimited(WarmrouteError):
    """A request or token limit was exceeded; `retry_after` is in seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestFailed(WarmrouteError):
    """The engine's work on this request raised (its forward pass or sampling): it failed
    alone, the engine and its other requests are fine, so it is not worth retrying elsewhere."""


class EngineUnavailable(WarmrouteError):
    """No healthy engine could take the request."""


class RunInterrupted(EngineUnavailable):
    """Background work (a deferred completion) whose gateway stopped before it finished; it
    is not running any more: start it again."""


class EngineOverloaded(EngineUnavailable):
    """An engine has as many requests waiting as it queues; `retry_after` is in seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(WarmrouteError):
    """The database cannot be opened or reached (or is locked), or its schema is newer than
    this code; `retry_after` is in seconds."""

    def __init__(self, message: str, retry_after: float = 2.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
