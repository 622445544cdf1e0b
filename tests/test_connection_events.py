"""`connection_events`: the gateway's server tells a request's handler that its client left,
with no task listening (`procs.header_timeout_protocol` puts the connection's events in every
request's scope; `bare_asgi.client_watch` registers for them: `tests/api/test_client_watch.py`)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from warmroute.api.bare_asgi import client_watch
from warmroute.connection_events import (
    EXTENSION,
    ConnectionEvents,
    connection_events,
    give_connection_events,
)
from warmroute.procs import BackgroundServer, free_port

Handler = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def lifespan_wrapped(handler: Handler) -> Handler:
    """`handler` as an ASGI app that also answers the server's lifespan messages."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await handler(scope, receive, send)

    return app


@contextmanager
def served(handler: Handler) -> Iterator[int]:
    """`handler` for every HTTP request, under uvicorn with the gateway's protocol; its port."""
    port = free_port()
    server = BackgroundServer(lifespan_wrapped(handler), "127.0.0.1", port).start()
    try:
        yield port
    finally:
        server.stop()


async def answer_ok(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_each_callback_runs_once_and_a_discarded_one_not_at_all() -> None:
    events = ConnectionEvents()
    calls: list[str] = []

    def kept() -> None:
        calls.append("kept")

    def dropped() -> None:
        calls.append("dropped")

    events.on_lost(kept)
    events.on_lost(dropped)
    events.discard(dropped)
    events.discard(dropped)  # twice: nothing happens
    events.connection_lost()
    events.connection_lost()  # the transport reports once; a second call finds nobody
    assert calls == ["kept"]
    events.on_lost(lambda: calls.append("late"))  # registered after the loss: runs at once
    assert calls == ["kept", "late"]


def test_a_failing_callback_does_not_keep_the_others_from_running() -> None:
    events = ConnectionEvents()
    calls: list[str] = []

    def failing() -> None:
        raise RuntimeError("a broken callback")

    events.on_lost(failing)
    events.on_lost(lambda: calls.append("told"))
    events.connection_lost()  # logged, not raised into the server's connection_lost
    assert calls == ["told"]


def test_registering_starts_reading_the_connection_again() -> None:
    """A loss is seen only while the connection is read: registering asks the server to read
    (uvicorn pauses reading while a large body waits for its handler)."""
    resumed: list[bool] = []
    events = ConnectionEvents(resume_reading=lambda: resumed.append(True))
    events.on_lost(lambda: None)
    assert resumed == [True]


def test_the_events_travel_in_the_scope_beside_other_extensions() -> None:
    events = ConnectionEvents()
    bare: dict[str, Any] = {"type": "http"}
    give_connection_events(bare, events)
    assert connection_events(bare) is events
    other: dict[str, Any] = {"type": "http", "extensions": {"http.response.trailers": {}}}
    give_connection_events(other, events)
    assert other["extensions"] == {"http.response.trailers": {}, EXTENSION: events}
    assert connection_events({"type": "http"}) is None
    assert connection_events({"extensions": {EXTENSION: "not the events"}}) is None


def test_the_server_gives_every_request_its_connections_events() -> None:
    """Through uvicorn with the gateway's protocol: two requests on one kept-alive connection
    get the same events, and closing the socket mid-request tells the handler at once."""
    seen: list[ConnectionEvents | None] = []
    told: list[float] = []

    async def handler(scope: dict[str, Any], receive: Any, send: Any) -> None:
        events = connection_events(scope)
        seen.append(events)
        if scope["path"] == "/hold" and events is not None:
            gone = asyncio.Event()
            events.on_lost(gone.set)
            await asyncio.wait_for(gone.wait(), 10)
            told.append(time.monotonic())
            return
        await answer_ok(send)

    with served(handler) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            for _ in range(2):
                conn.sendall(b"GET /plain HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert conn.recv(4096).endswith(b"\r\n\r\nok")
            conn.sendall(b"GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            deadline = time.monotonic() + 10
            while len(seen) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        closed = time.monotonic()
        while not told and time.monotonic() < closed + 10:
            time.sleep(0.01)
    assert len(seen) == 3 and seen[0] is not None
    assert seen[1] is seen[0] and seen[2] is seen[0]  # one connection, one set of events
    assert told and told[0] - closed < 2.0


@pytest.mark.parametrize("pipelined", [2, 3])
def test_pipelined_requests_each_get_the_events(pipelined: int) -> None:
    """Requests sent back to back in one packet are queued by the server; each still gets the
    connection's events when its turn comes."""
    seen: list[ConnectionEvents | None] = []

    async def handler(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(connection_events(scope))
        await answer_ok(send)

    with served(handler) as port, socket.create_connection(("127.0.0.1", port), 10) as conn:
        conn.sendall(b"GET /a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * pipelined)
        received = b""
        deadline = time.monotonic() + 10
        while received.count(b"ok") < pipelined and time.monotonic() < deadline:
            received += conn.recv(4096)
    assert len(seen) == pipelined
    assert all(isinstance(events, ConnectionEvents) for events in seen)


@pytest.mark.parametrize("size", [300_000, 600_000])
def test_a_handler_that_read_a_large_body_is_told_its_client_left(size: int) -> None:
    """uvicorn stops reading a connection while more than 64 KiB of body waits for its
    handler, and only `receive()` starts it again; a connection that is not read is never seen
    to close. A watch registering for the loss starts reading again (these sizes leave it
    paused after the last body message)."""
    outcome: dict[str, Any] = {}

    async def handler(scope: dict[str, Any], receive: Any, send: Any) -> None:
        read = 0
        while True:
            message = await receive()
            read += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        outcome["read"] = read
        with client_watch(scope, never_receive) as watch:
            outcome["watching"] = time.monotonic()
            await asyncio.sleep(10)
        outcome["told_after_s"] = time.monotonic() - outcome["watching"]
        outcome["cancelled"] = watch.cancel_called

    with served(handler) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-length: %d\r\n\r\n"
                         % size + b"x" * size)
            deadline = time.monotonic() + 10
            while "watching" not in outcome and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)
        deadline = time.monotonic() + 12
        while "cancelled" not in outcome and time.monotonic() < deadline:
            time.sleep(0.02)
    assert outcome["read"] == size
    assert outcome["cancelled"] is True
    assert outcome["told_after_s"] < 2.0


async def never_receive() -> dict[str, Any]:
    raise AssertionError("a watch told by its server does not listen to receive()")


def test_a_websocket_outlives_the_header_timeout() -> None:
    """The head timer is for a request's head: a connection upgraded to a WebSocket leaves it
    behind (it closed every WebSocket `header_timeout_s` after it opened)."""
    from websockets.sync.client import connect

    async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] != "websocket.disconnect":
            await send({"type": "websocket.send", "text": message.get("text") or ""})

    port = free_port()
    server = BackgroundServer(lifespan_wrapped(echo), "127.0.0.1", port,
                              header_timeout_s=0.5).start()
    try:
        with connect(f"ws://127.0.0.1:{port}/", open_timeout=10) as ws:
            ws.send("one")
            assert ws.recv(timeout=5) == "one"
            time.sleep(1.5)  # three header timeouts
            ws.send("two")
            assert ws.recv(timeout=5) == "two"
    finally:
        server.stop()
