"""The gateway's HTTP/1.1 client for engines: asyncio protocols and httptools' parser.

Every relayed request crosses this client twice (its body out, its answer back), so it is the
floor of what the gateway adds. Measured here in one interleaved run
(`benchmarks/overhead_floor.py`: a proxy that does nothing but relay, under uvicorn), a ~38 KB
prompt added +0.83 ms p50 with aiohttp's client and +0.37 ms with this one, at 0.75 against 0.50
CPU seconds per 1,000 requests. aiohttp's client is general (redirects, cookies, proxies,
compression, multipart, tracing, its own stream readers and timers per request); engines on a
private network need one thing: a request written, an answer parsed as it arrives. The parsing is
httptools (the parser uvicorn serves with); what is here is the pool and the flow of bytes.

- `LeanUpstream` implements `upstream.UpstreamClient`: `post` answers once the status and headers
  are in; the body is read whole (`read`) or as it arrives (`next_piece`); `aclose` puts a
  connection whose answer was read to the end back in the pool and closes any other (an engine
  aborts the request whose connection closes). At most `max_connections` requests are at engines
  at once; a request that waits `pool_timeout_s` for a place is `UpstreamPoolFull`.
- Keep-alive: an idle connection is reused for `KEEPALIVE_S` (less than the 5 s after which
  uvicorn engines close one), then dropped; one the engine closed leaves the pool when it closes.
  A reused connection that closes before a byte of the answer came (the engine closed it as the
  request went out) is not the engine's failure: the request goes again on a new connection.
- Timeouts: connecting (`ConnectTimeout`); no byte for `read_timeout_s` while an answer is awaited
  (`ReadTimeout`: the connection is closed). A refused or failed connection is `ConnectError`, a
  connection lost or an answer that is not HTTP is `RemoteProtocolError` (httpx's names, which the
  logs, metrics and error messages use). Informational answers (1xx) before the answer are skipped.
- Flow control: reading pauses while more than `HIGH_WATER` bytes wait for a slow reader.
- Not here: HTTP/2, proxies, redirects, cookies, compression (`accept-encoding` is not sent),
  `Expect: 100-continue`, a body delimited by the connection's close (neither `content-length` nor
  chunked: httptools cannot be told the stream ended, so it reads as a connection lost; uvicorn,
  vLLM's and SGLang's servers always send one or the other). `https://` engines are reached
  with the system's default TLS context.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools
from starlette.datastructures import Headers

from warmroute.gateway.engine_request import Origin, request_head
from warmroute.gateway.upstream import KEEPALIVE_S, MAX_CONNECTIONS, UpstreamError, UpstreamPoolFull

HIGH_WATER = 256 * 1024  # bytes buffered for a slow reader before reading pauses
MAX_URLS = 4096  # parsed request targets kept
TIMER_RESOLUTION_S = 0.001


class Connection(asyncio.Protocol):
    """One connection to an engine, one request at a time; the answer's bytes are buffered here
    until its reader takes them."""

    def __init__(self, client: LeanUpstream, origin: Origin) -> None:
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


class LeanResponse:
    """An engine's answer: status and headers in, the body read whole or as it comes."""

    def __init__(self, conn: Connection, client: LeanUpstream, bounded: bool) -> None:
        self._conn: Connection | None = conn
        self._client = client
        self._bounded = bounded
        self.status: int = conn.status
        self.headers: Mapping[str, str] = Headers(raw=conn.raw_headers)

    async def read(self) -> bytes:
        parts: list[bytes] = []
        while (piece := await self.next_piece()) is not None:
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def next_piece(self) -> bytes | None:
        """All of the body that came since the last piece (waiting for some); None at its end,
        and once the response is released (its connection may serve another request)."""
        while (conn := self._conn) is not None:
            chunk = conn.take()
            if chunk is not None:
                return chunk
            if conn.error is not None:
                raise UpstreamError(conn.error)
            if conn.complete:
                return None
            await conn.more()
        return None

    async def aclose(self) -> None:
        """Release the connection (to the pool when the body was read whole, else closed,
        which aborts the engine's work); idempotent."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._client.release(conn, self._bounded)


class LeanUpstream:
    """Keep-alive connections to engines, at most `max_connections` requests at once."""

    def __init__(self, connect_timeout_s: float, read_timeout_s: float,
                 pool_timeout_s: float, max_connections: int = MAX_CONNECTIONS) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._pool_timeout_s = pool_timeout_s
        self._places = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, list[Connection]] = {}
        self._targets: dict[str, tuple[Origin, bytes]] = {}
        self._tls: ssl.SSLContext | None = None

    async def post(self, url: str, content: bytes,
                   headers: Mapping[str, str]) -> LeanResponse:
        if self._places.locked():  # every place taken: wait, boundedly (a task; rare)
            try:
                await asyncio.wait_for(self._places.acquire(), self._pool_timeout_s)
            except TimeoutError as exc:
                raise UpstreamPoolFull("PoolTimeout") from exc
        else:
            await self._places.acquire()  # free: returns at once
        try:
            return await self._request(b"POST", url, headers, content, bounded=True)
        except BaseException:
            self._places.release()
            raise

    async def get_body(self, url: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
        """`GET url`: its status and whole body (health probes; outside the request bound)."""
        response = await self._request(b"GET", url, headers, b"", bounded=False)
        try:
            return response.status, await response.read()
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn.close()
        self._idle.clear()

    # -- the pool -----------------------------------------------------------------------------

    async def _request(self, method: bytes, url: str, headers: Mapping[str, str],
                       content: bytes, bounded: bool) -> LeanResponse:
        origin, target = self._target(url)
        request = request_head(method, target, origin, headers, len(content)) + content
        while True:
            reused = self._reuse(origin)
            conn = reused or await self._connect(origin)
            transport = conn.open_transport()
            if transport is None:
                conn.close()  # lost as it was made (an engine killed as it accepted)
                raise UpstreamError("ConnectError")
            conn.begin()
            transport.write(request)
            try:
                await conn.wait(conn.head)
            except BaseException:
                conn.close()  # cancelled while the engine works: it aborts the request
                raise
            if conn.error is None:
                return LeanResponse(conn, self, bounded)
            if reused is None or conn.received or conn.error != "RemoteProtocolError":
                raise UpstreamError(conn.error)
            # A kept-alive connection the engine closed as the request went out (its idle
            # timeout, a restart): not a failure of the engine; once more on a new connection.

    def _target(self, url: str) -> tuple[Origin, bytes]:
        known = self._targets.get(url)
        if known is not None:
            return known
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError("ConnectError")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        known = (parts.scheme, parts.hostname, port), path.encode("ascii")
        if len(self._targets) >= MAX_URLS:
            self._targets.clear()
        self._targets[url] = known
        return known

    def _reuse(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if conn.open_transport() is not None and now - conn.idle_since < KEEPALIVE_S:
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin) -> Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(self, origin), host, port, ssl=tls),
                self.connect_timeout_s)
        except TimeoutError as exc:
            raise UpstreamError("ConnectTimeout") from exc
        except OSError as exc:
            raise UpstreamError("ConnectError") from exc
        return conn

    def release(self, conn: Connection, bounded: bool) -> None:
        if bounded:
            self._places.release()
        if conn.reusable():
            now = conn.loop.time()
            conn.idle_since = now
            idle = self._idle.setdefault(conn.origin, [])
            while idle and now - idle[0].idle_since >= KEEPALIVE_S:  # the oldest expired
                idle.pop(0).close()
            idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: Connection) -> None:
        """A closed connection leaves the pool."""
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)
