"""One HTTP/1.1 connection to an engine (`engine_http.LeanUpstream`'s): an asyncio protocol
that writes nothing itself and parses what comes back with httptools.

A `Connection` serves one request at a time. Its answer's status and headers resolve `head`;
the body is buffered (`body`) until its reader `take`s it, and `more` waits for the next bytes,
its end, or a failure (`error`: httpx's names — `RemoteProtocolError` for a connection lost or an
answer that is not HTTP, `ReadTimeout` when no byte came for the pool's `read_timeout_s`; the
connection is then closed). Reading pauses while more than `HIGH_WATER` bytes wait for a slow
reader. One read timer per connection, armed lazily and moved on when it fires early (`wait`).
A connection that closes leaves its pool (`Pool.forget`); closing aborts the transport at once,
so that an engine aborts the request.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol, cast

import httptools

from warmroute.gateway.engine_request import Origin

HIGH_WATER = 256 * 1024  # bytes buffered for a slow reader before reading pauses
TIMER_RESOLUTION_S = 0.001


class Pool(Protocol):
    """What a connection needs of the pool it belongs to."""

    read_timeout_s: float

    def forget(self, conn: Connection) -> None:
        """A closed connection leaves the pool."""


class Connection(asyncio.Protocol):
    """One connection to an engine, one request at a time; the answer's bytes are buffered here
    until its reader takes them."""

    def __init__(self, client: Pool, origin: Origin) -> None:
        self.client, self.origin = client, origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.timer: asyncio.TimerHandle | None = None  # the read timeout's (`wait`)
        self.awaited: asyncio.Future[None] | None = None
        self.waiting_since = 0.0
        self.begin()

    def begin(self) -> None:
        """Ready for the next request's answer."""
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[None] = self.loop.create_future()
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.complete = False
        self.error: str | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.received = False  # any byte of this answer

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.complete or self.error is not None:  # bytes no request asked for
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail("RemoteProtocolError")
        except httptools.HttpParserError:
            if self.complete:  # a second answer after this one (`on_message_begin`): the
                self.close()   # answer stands, the connection cannot be trusted again
            else:
                self.fail("RemoteProtocolError")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stop_timer()
        self.client.forget(self)
        if not self.complete:
            self.fail("RemoteProtocolError")

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise ConnectionError("an answer no request asked for")  # stops the parser

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # informational (100 Continue, 103 Early Hints): the answer follows
            self.raw_headers = []
            return
        self.status = status
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self.wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # an informational answer ended; the real one is still to come
        self.complete = True
        if not self.parser.should_keep_alive():
            self.idle_since = -1.0  # not to be reused
        self.wake()

    # -- the reader's side --------------------------------------------------------------------

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, cause: str) -> None:
        """The answer cannot go on: whoever waits for it gets `UpstreamError(cause)`."""
        if self.error is None:
            self.error = cause
        if not self.head.done():
            self.head.set_result(None)
        self.wake()
        self.close()

    async def wait(self, future: asyncio.Future[None]) -> None:
        """Wait for `future` (the head, or more body), at most the read timeout. One timer per
        connection, armed when none is and moved on when it fires early: a stream waits once
        per chunk, and a timer made and cancelled each time cost more than the rest of it."""
        self.awaited, self.waiting_since = future, self.loop.time()
        if self.timer is None:
            self.timer = self.loop.call_at(self.waiting_since + self.client.read_timeout_s,
                                           self.check_timeout)
        try:
            await future
        finally:
            self.awaited = None

    def check_timeout(self) -> None:
        self.timer = None
        future = self.awaited
        if future is None or future.done():  # what it waited for may have come this loop turn
            return
        deadline = self.waiting_since + self.client.read_timeout_s
        if self.loop.time() >= deadline - TIMER_RESOLUTION_S:  # uvloop's timers count in ms
            self.fail("ReadTimeout")
        else:
            self.timer = self.loop.call_at(deadline, self.check_timeout)

    def take(self) -> bytes | None:
        """All of the body buffered so far, in one piece, or None when none waits (a reader
        that fell behind gets what came meanwhile at once: one write onwards, not many)."""
        body = self.body
        if not body:
            return None
        chunk = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    async def more(self) -> None:
        """Wait until more body, its end or a failure is in."""
        self.waiter = self.loop.create_future()
        try:
            await self.wait(self.waiter)
        finally:
            self.waiter = None

    def open_transport(self) -> asyncio.Transport | None:
        """The transport while the connection is open, else None (uvloop closes a lost
        connection's transport at once and tells the protocol a loop turn later)."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return None
        return transport

    def reusable(self) -> bool:
        return (self.complete and self.error is None and not self.closed
                and self.idle_since >= 0.0 and not self.body)

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        """Closed at once, whatever of the request is still unsent (an engine that stopped
        reading a big prompt must not keep the socket and its buffer), so the engine aborts."""
        self.stop_timer()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
            self.client.forget(self)
