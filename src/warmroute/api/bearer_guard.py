"""An engine started with `--api-key` lets in only callers that send it, as vLLM and SGLang do:
`Authorization: Bearer <key>` on every HTTP route but the open ones (`/health`, which load
balancers and the gateway's prober read). A plain ASGI middleware, so streams pass untouched;
the key is compared in constant time and never echoed.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

from starlette.responses import JSONResponse

from warmroute.api.wire_errors import error_response
from warmroute.errors import AuthError

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
OPEN_PATHS = frozenset({"/health"})


class BearerGuard:
    def __init__(self, app: ASGIApp, api_key: str, open_paths: Collection[str] = OPEN_PATHS):
        self.app = app
        self.expected = f"bearer {api_key}".encode()
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths or self.allows(scope):
            await self.app(scope, receive, send)
            return
        refused: JSONResponse = error_response(
            AuthError("Missing or wrong API key: send Authorization: Bearer <key>")
        )
        refused.headers["www-authenticate"] = "Bearer"
        await refused(scope, receive, send)

    def allows(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = bytes(value).strip().partition(b" ")
                offered = scheme.lower() + b" " + token.strip()
                return hmac.compare_digest(offered, self.expected)
        return False
