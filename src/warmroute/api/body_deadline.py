"""ASGI middleware bounding the time a client takes to send a request's body.

From the moment its headers are complete, a request has `timeout_s` to deliver its whole body;
a route still reading it then gets `RequestTimeout` (408 in xAI's envelope), so a client that
trickles its body a byte at a time holds no handler for longer. Waits after the body (a route
listening for the client to go away) are not bounded here. Headers have their own bound in the
server (`procs.server_config`).
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from warmroute.errors import RequestTimeout

DEFAULT_BODY_TIMEOUT_S = 60.0


class BodyDeadline:
    def __init__(self, app: ASGIApp, timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        done = False

        async def bounded() -> Message:
            nonlocal done
            if done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):  # no task per message, as wait_for has
                    message = await receive()
            except TimeoutError:
                done = True
                raise RequestTimeout(
                    f"the request body did not arrive within {self.timeout_s:g} s"
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        await self.app(scope, bounded, send)
