"""The gateway's HTTP/1.1 client for engines (`gateway/engine_http.py`) against real servers on
loopback: uvicorn serving small ASGI apps, and a raw asyncio server where an engine must
misbehave in ways uvicorn never does."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
import uvloop
from starlette.requests import Request

from warmroute.gateway import engine_connection, engine_request
from warmroute.gateway.engine_http import LeanUpstream
from warmroute.gateway.upstream import KEEPALIVE_S, UpstreamError, UpstreamPoolFull
from warmroute.procs import free_port

Scope = dict[str, Any]


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning", http="httptools"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def client(**kwargs: Any) -> AsyncIterator[LeanUpstream]:
    upstream = LeanUpstream(kwargs.pop("connect", 2.0), kwargs.pop("read", 2.0),
                            kwargs.pop("pool", 2.0), **kwargs)
    try:
        yield upstream
    finally:
        await upstream.aclose()


async def body_of(receive: Any) -> bytes:
    return await Request({"type": "http"}, receive).body()


class Echo:
    """Answers with what it was sent, the client's port and the request's headers."""

    def __init__(self) -> None:
        self.ports: list[int] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        body = await body_of(receive)
        self.ports.append(scope["client"][1])
        headers = dict(scope["headers"])
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"application/json"), (b"X-Seen", b"yes"),
                                (b"x-auth", headers.get(b"authorization", b""))]})
        await send({"type": "http.response.body",
                    "body": scope["method"].encode() + b" " + scope["path"].encode() + b" " + body})


def test_a_pooled_connection_closing_under_it_is_not_reused() -> None:
    """A pooled connection whose transport is closing (its protocol not told yet) is left for
    a new one."""

    async def main() -> None:
        app = Echo()
        async with serving(app) as url, client() as upstream:
            first = await upstream.post(url + "/a", b"{}", {})
            assert await first.read() == b"POST /a {}"
            await first.aclose()
            (pooled,) = [conn for idle in upstream._idle.values() for conn in idle]
            assert pooled.transport is not None
            pooled.transport.abort()
            assert not pooled.closed  # `connection_lost` has not run yet
            second = await upstream.post(url + "/b", b"{}", {})
            assert await second.read() == b"POST /b {}"
            await second.aclose()
            assert len(set(app.ports)) == 2

    uvloop.run(main())


def test_a_new_connection_lost_before_the_request_is_a_connect_error() -> None:
    """An engine killed as it accepted: the connection is lost before the request is written
    (uvloop raised on writing to it: a 500, seen when an engine was killed); it is a
    connect error, which fails over."""

    async def main() -> None:
        async with serving(Echo()) as url, client() as upstream:
            connect = upstream._connect

            async def lost_at_once(origin: Any) -> engine_connection.Connection:
                conn = await connect(origin)
                assert conn.transport is not None
                conn.transport.abort()
                await asyncio.sleep(0)  # the protocol is told: `connection_lost`
                return conn

            upstream._connect = lost_at_once  # type: ignore[method-assign]
            with pytest.raises(UpstreamError) as failed:
                await upstream.post(url + "/x", b"{}", {})
            assert failed.value.cause == "ConnectError"

    uvloop.run(main())


async def test_an_answer_is_read_whole_and_its_connection_reused() -> None:
    app = Echo()
    async with serving(app) as url, client() as upstream:
        for n in range(3):
            answer = await upstream.post(url + "/v1/chat/completions", b'{"n": %d}' % n,
                                         {"authorization": "Bearer k"})
            assert (answer.status, answer.headers["x-seen"], answer.headers["X-Auth"]) == (
                201, "yes", "Bearer k")
            assert await answer.read() == b'POST /v1/chat/completions {"n": %d}' % n
            await answer.aclose()
        status, body = await upstream.get_body(url + "/health", {})
        assert (status, body) == (201, b"GET /health ")
    assert len(set(app.ports)) == 1  # one connection, kept alive


async def test_an_idle_connection_is_not_reused_after_the_keepalive() -> None:
    assert uvicorn.Config(app=None).timeout_keep_alive > KEEPALIVE_S  # engines drop them at 5 s
    app = Echo()
    async with serving(app) as url, client() as upstream:
        await upstream.get_body(url + "/a", {})
        for idle in upstream._idle.values():
            for conn in idle:
                conn.idle_since -= KEEPALIVE_S
        await upstream.get_body(url + "/b", {})
        await upstream.get_body(url + "/c", {})
    assert app.ports[0] != app.ports[1] and app.ports[1] == app.ports[2]


async def test_a_stream_arrives_as_it_is_sent_and_closing_it_aborts_the_request() -> None:
    go_on, gone = asyncio.Event(), asyncio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await body_of(receive)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await go_on.wait()
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
        if (await receive())["type"] == "http.disconnect":
            gone.set()

    async with serving(app) as url, client() as upstream:
        answer = await upstream.post(url + "/s", b"{}", {})
        assert await answer.next_piece() == b"data: 1\n\n"  # before the answer goes on
        go_on.set()
        assert await answer.next_piece() == b"data: 2\n\n"
        await answer.aclose()
        await asyncio.wait_for(gone.wait(), 5)
        assert upstream._idle.get(("http", "127.0.0.1", int(url.rsplit(":", 1)[1])), []) == []


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with client() as upstream:
        with pytest.raises(UpstreamError) as failed:
            await upstream.post(f"http://127.0.0.1:{free_port()}/x", b"{}", {})
    assert failed.value.cause == "ConnectError"


async def test_silence_past_the_read_timeout_is_a_read_timeout_and_ends_the_request() -> None:
    gone = asyncio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await body_of(receive)
        if scope["path"] == "/head":
            if (await receive())["type"] == "http.disconnect":
                gone.set()
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await asyncio.sleep(5)

    async with serving(app) as url, client(read=0.3) as upstream:
        with pytest.raises(UpstreamError) as failed:
            await upstream.post(url + "/head", b"{}", {})
        assert failed.value.cause == "ReadTimeout"
        await asyncio.wait_for(gone.wait(), 5)
        answer = await upstream.post(url + "/body", b"{}", {})
        with pytest.raises(UpstreamError) as failed:
            await answer.read()
        assert failed.value.cause == "ReadTimeout"
        await answer.aclose()


async def test_each_wait_has_the_whole_read_timeout() -> None:
    """Parts that come more often than the read timeout, over longer than it, are read whole;
    a reader that takes longer than it between its reads is not timed out for that."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await body_of(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for index in range(6):
            await send({"type": "http.response.body", "body": b"%d" % index, "more_body": True})
            await asyncio.sleep(0.15)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with serving(app) as url, client(read=0.4) as upstream:
        answer = await upstream.post(url + "/parts", b"{}", {})
        assert await answer.read() == b"012345"
        await answer.aclose()
        answer = await upstream.post(url + "/parts", b"{}", {})
        pieces = [await answer.next_piece()]
        await asyncio.sleep(0.6)  # the reader is busy; nothing waits on the engine
        while (piece := await answer.next_piece()) is not None:
            pieces.append(piece)
        assert b"".join(p for p in pieces if p) == b"012345"
        await answer.aclose()


@contextlib.asynccontextmanager
async def raw_server(reply: bytes) -> AsyncIterator[str]:
    """A server that reads a request head, writes `reply` and closes the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_an_engine_dying_mid_body_or_answering_garbage_is_a_protocol_error() -> None:
    short = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b"
    async with raw_server(short) as url, client() as upstream:
        answer = await upstream.post(url + "/x", b"{}", {})
        with pytest.raises(UpstreamError) as failed:
            await answer.read()
        assert failed.value.cause == "RemoteProtocolError"
        await answer.aclose()
    for reply in (b"NOT HTTP AT ALL\r\n\r\n", b""):
        async with raw_server(reply) as url, client() as upstream:
            with pytest.raises(UpstreamError) as failed:
                await upstream.post(url + "/x", b"{}", {})
            assert failed.value.cause == "RemoteProtocolError"


async def test_informational_answers_before_the_answer_are_skipped() -> None:
    reply = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"
             b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-real: 1\r\n\r\nok")
    async with raw_server(reply) as url, client() as upstream:
        answer = await upstream.post(url + "/x", b"{}", {})
        assert (answer.status, dict(answer.headers)) == (200, {"content-length": "2",
                                                                "x-real": "1"})
        assert await answer.read() == b"ok"
        await answer.aclose()


async def test_a_kept_alive_connection_closed_as_the_request_went_out_is_not_a_failure() -> None:
    """The engine answers the first request on a connection, then closes it on reading the
    next (its idle timeout firing as the request arrived): the request goes again on a new
    connection, once; a new connection closed that way is the engine's failure."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        answered = 0
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            if answered or len(connections) > 2:
                break  # closes without a byte of an answer
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            answered += 1
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with client() as upstream:
            assert await upstream.get_body(url + "/1", {}) == (200, b"ok")
            assert await upstream.get_body(url + "/2", {}) == (200, b"ok")  # again, new conn
            assert len(connections) == 2
            with pytest.raises(UpstreamError) as failed:  # conn 2 closes, conn 3 closes too
                await upstream.get_body(url + "/3", {})
            assert failed.value.cause == "RemoteProtocolError" and len(connections) == 3
    finally:
        server.close()
        await server.wait_closed()


async def test_a_second_answer_in_the_same_packet_does_not_touch_the_first() -> None:
    reply = (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
             b"HTTP/1.1 500 Nope\r\ncontent-length: 3\r\nevil: 1\r\n\r\nbad")
    async with raw_server(reply) as url, client() as upstream:
        answer = await upstream.post(url + "/x", b"{}", {})
        assert (answer.status, "evil" in answer.headers) == (200, False)
        assert await answer.read() == b"ok"
        await answer.aclose()
        assert all(not idle for idle in upstream._idle.values())  # never reused


async def test_a_timed_out_request_to_an_engine_that_stopped_reading_is_closed_at_once() -> None:
    """16 MiB the engine never reads: the timeout closes the socket with its unsent buffer
    (a graceful close would wait for the engine to read it, for ever)."""
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()  # reads nothing
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    lost = asyncio.Event()
    try:
        async with client(read=0.3) as upstream:
            connect = upstream._connect

            async def watched(origin: Any) -> engine_connection.Connection:
                conn = await connect(origin)
                gone = conn.connection_lost

                def lost_too(exc: Exception | None) -> None:
                    lost.set()
                    gone(exc)

                conn.connection_lost = lost_too  # type: ignore[method-assign]
                return conn

            upstream._connect = watched  # type: ignore[method-assign]
            with pytest.raises(UpstreamError) as failed:
                await upstream.post(url + "/big", b"x" * 2**24, {})
            assert failed.value.cause == "ReadTimeout"
            await asyncio.wait_for(lost.wait(), 2)  # while the engine still reads nothing
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_an_answer_that_closes_its_connection_is_not_pooled() -> None:
    reply = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
    async with raw_server(reply) as url, client() as upstream:
        assert await upstream.get_body(url + "/x", {}) == (200, b"ok")
        assert await upstream.get_body(url + "/x", {}) == (200, b"ok")
        assert all(not idle for idle in upstream._idle.values())


class TwoParts:
    """Answers `first` at once and `last` once `release` is set."""

    def __init__(self, first: bytes, last: bytes) -> None:
        self.first, self.last = first, last
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await body_of(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": self.first, "more_body": True})
        await self.release.wait()
        await send({"type": "http.response.body", "body": self.last})


async def test_requests_beyond_the_bound_wait_then_fail_as_pool_full() -> None:
    app = TwoParts(b"a", b"b")
    release = app.release

    async with serving(app) as url, client(pool=0.2, max_connections=1) as upstream:
        held = await upstream.post(url + "/1", b"{}", {})
        with pytest.raises(UpstreamPoolFull):
            await upstream.post(url + "/2", b"{}", {})
        release.set()
        assert await held.read() == b"ab"
        await held.aclose()
        again = await upstream.post(url + "/3", b"{}", {})  # the place came back
        assert await again.read() == b"ab"
        await again.aclose()


async def test_a_slow_reader_pauses_reading_and_gets_every_byte() -> None:
    payload = bytes(range(256)) * (4 * 4096)  # 4 MiB

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await body_of(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for start in range(0, len(payload), 65536):
            await send({"type": "http.response.body", "body": payload[start:start + 65536],
                        "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async with serving(app) as url, client() as upstream:
        answer = await upstream.post(url + "/big", b"{}", {})
        digest, paused, most = hashlib.sha256(), False, 0
        while (chunk := await answer.next_piece()) is not None:
            digest.update(chunk)
            await asyncio.sleep(0.002)  # a slow client
            conn = answer._conn
            assert conn is not None
            paused |= conn.paused
            most = max(most, conn.buffered)
        await answer.aclose()
    assert digest.digest() == hashlib.sha256(payload).digest()
    assert paused and most < engine_connection.HIGH_WATER + 2**20


def test_a_header_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError):
        engine_request.request_head(b"GET", b"/", ("http", "h", 80), {"x": "a\r\nb: c"}, 0)
    assert engine_request.request_head(b"POST", b"/p", ("http", "h", 8000), {"a": "b"}, 3) == (
        b"POST /p HTTP/1.1\r\nhost: h:8000\r\na: b\r\ncontent-length: 3\r\n\r\n")
    assert engine_request.request_head(b"GET", b"/", ("http", "::1", 80), {}, 0) == (
        b"GET / HTTP/1.1\r\nhost: [::1]\r\n\r\n")


def test_an_answer_has_ended_once_its_whole_body_is_in_and_taken() -> None:
    """`ended` tells a stream's drain that nothing is left to read (no wait, no timer): not
    while the body is still coming, nor while bytes of it are buffered untaken."""
    two_parts = TwoParts(b"first", b"last")
    release = two_parts.release

    async def main() -> None:
        async with serving(two_parts) as url, client() as upstream:
            answer = await upstream.post(url + "/", b"{}", {})
            assert await answer.next_piece() == b"first"
            assert not answer.ended  # the rest is still to come
            release.set()
            conn = answer._conn
            assert conn is not None
            for _ in range(200):
                if conn.complete:
                    break
                await asyncio.sleep(0.01)
            assert conn.complete and not answer.ended  # in, but not taken
            assert await answer.next_piece() == b"last"
            assert answer.ended
            await answer.aclose()
            assert answer.ended
            assert len([c for idle in upstream._idle.values() for c in idle]) == 1  # reusable

    uvloop.run(main())
