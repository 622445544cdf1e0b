"""Bare ASGI for the relay's hot routes: answered before FastAPI's middleware and router.

Every relayed request pays for each layer it crosses, and FastAPI's stack (error middleware,
exception middleware, an exit stack, body limits, route matching, dependency solving, the
streaming response's task group) costs more than the relay itself on a warm path. `BareRoutesApp`
is the gateway's FastAPI app with a small table of (method, path) → bare ASGI handler in front:
those requests go straight to their handler (still through the body deadline their handler
wraps itself in), everything else to FastAPI as before. The routes stay registered with FastAPI
too, so the OpenAPI document is unchanged.

A bare handler owns what the stack did for it: `answer_error` (xAI's envelope, the one mapping
in `wire_errors`; `BareHandler` wraps a route that answers with a Response), `client_watch`
(work cancelled when its client goes away: told by the server, or one listening task; no
polling), `send_stream` (a stream sent chunk by chunk, one await per chunk, always finished;
its last chunk goes out with the body's end, in one write). The bare routes: Chat
Completions, creating a response, Messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from warmroute.api.body_deadline import BodyDeadline
from warmroute.api.wire_errors import error_response
from warmroute.connection_events import connection_events
from warmroute.errors import WarmrouteError

log = logging.getLogger(__name__)


class BareRoutesApp(FastAPI):
    """FastAPI with bare ASGI handlers in front for a few (method, path) pairs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bare_routes: dict[tuple[str, str], ASGIApp] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            bare = self.bare_routes.get((scope["method"], scope["path"]))
            if bare is not None:
                await bare(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def serve_bare(app: FastAPI, method: str, path: str, handler: ASGIApp,
               body_timeout_s: float) -> None:
    """Serve `handler` bare where `app` allows it, under the body deadline that FastAPI's
    middleware gives its routes (the route stays registered with FastAPI as well)."""
    if isinstance(app, BareRoutesApp):
        app.bare_routes[(method, path)] = BodyDeadline(handler, timeout_s=body_timeout_s)


class BareHandler:
    """A route that answers a `Request` with a `Response`, as a bare ASGI handler: a failure
    before the answer is xAI's envelope, as FastAPI's handlers would answer it."""

    def __init__(self, answer: Callable[[Request], Awaitable[Response]]) -> None:
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self.answer(Request(scope, receive))
        except Exception as exc:
            await answer_error(exc, scope, receive, send)
            return
        await response(scope, receive, send)


async def answer_error(exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
    """A request's failure before its answer started, as FastAPI's handlers would answer it."""
    if not isinstance(exc, WarmrouteError):
        log.exception("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
    await error_response(exc)(scope, receive, send)


class ClientWatch:
    """The handler's task, cancelled (once, natively, as `asyncio.timeout` cancels) when its
    client disconnects; `cancel_called` says whether that happened."""

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.cancel_called = False
        self.balanced = False  # the cancellation's count taken back (`Task.uncancel`)

    def client_left(self) -> None:
        """The client went away: the handler's work is cancelled (once)."""
        if not self.cancel_called:
            self.cancel_called = True
            self.task.cancel("the client went away")

    async def listen(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.client_left()

    def check(self) -> None:
        """Raise the cancellation again where it was swallowed on its way (asyncio.wait_for
        in Python 3.11 drops one that comes as its work ends): a relay's loop calls this for
        every chunk, so that a stream to a client that left stops at the next one."""
        if self.cancel_called:
            raise asyncio.CancelledError("the client went away")

    def uncancel(self) -> int:
        """Take back this watch's cancellation (once); the task's remaining count."""
        if not self.balanced:
            self.balanced = True
            return self.task.uncancel()
        return self.task.cancelling()


@contextlib.contextmanager
def client_watch(scope: Scope, receive: Receive) -> Iterator[ClientWatch]:
    """Work inside the block is cancelled when the client disconnects (enter it once the body
    is read); the block then ends quietly. Whoever needs it checks `cancel_called`
    afterwards: the work may have finished first. A native cancellation, delivered once: awaits
    after it (a cut-off stream's ledger row) are not cancelled again, as a cancelled anyio
    scope would cancel them (an anyio scope cost three `getpid` system calls per request in
    CPython 3.11, one for each running-loop lookup). Told by the server where it can
    (`connection_events`: a callback, no task); else a task listens to `receive`."""
    task = asyncio.current_task()
    assert task is not None
    watch = ClientWatch(task)
    events = connection_events(scope)
    listener: asyncio.Task[None] | None = None
    late: asyncio.Handle | None = None
    if events is None:
        listener = task.get_loop().create_task(watch.listen(receive))
    elif events.lost:  # gone already: cancelled from outside, at the block's first await
        late = task.get_loop().call_soon(watch.client_left)
    else:
        events.on_lost(watch.client_left)
    try:
        yield watch
    except asyncio.CancelledError:
        if not watch.cancel_called or watch.uncancel() > 0:
            raise  # not (only) ours: the server's, or another's
    finally:
        if events is not None:
            events.discard(watch.client_left)
        if listener is not None:
            listener.cancel()
        if late is not None:
            late.cancel()
        if watch.cancel_called:
            watch.uncancel()  # delivered, and caught or turned into another error inside


def raw_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def send_stream(send: Send, status: int, headers: Mapping[str, str],
                      next_body: Callable[[], Awaitable[tuple[bytes, bool]]],
                      finish: Callable[[], Awaitable[None]], watch: ClientWatch) -> None:
    """Send the bodies `next_body()` gives, each with whether more follows, as they come,
    until `watch` (the client's) says the client went away. The last goes out with the
    body's end: one write, not two (each write to a socket is a system call, and the client
    waits for the end). `finish()` runs however this ends, before the last body is sent."""
    body, more = b"", True
    try:
        await send({"type": "http.response.start", "status": status,
                    "headers": raw_headers(headers)})
        body, more = await next_body()
        while more:
            watch.check()
            await send({"type": "http.response.body", "body": body, "more_body": True})
            body, more = await next_body()
    finally:
        try:
            await finish()
        except Exception:
            if not more and body:  # the last body (an error event) still goes out, unended
                await send({"type": "http.response.body", "body": body, "more_body": True})
            raise
    await send({"type": "http.response.body", "body": body, "more_body": False})
