"""The gateway's HTTP/1.1 client for engines: asyncio protocols and httptools' parser.

Every relayed request crosses this client twice, so it is the floor of what the gateway adds.
In one interleaved run (`benchmarks/overhead_floor.py`: a proxy that only relays, under uvicorn)
a ~38 KB prompt added +0.83 ms p50 with aiohttp's client and +0.37 ms with this one, at 0.75
against 0.50 CPU seconds per 1,000 requests. aiohttp's client is general (redirects, cookies,
proxies, compression, tracing, its own readers and timers per request); engines on a private
network need a request written and an answer parsed as it arrives (by httptools, the parser
uvicorn serves with): what is here is the pool and the flow of bytes.

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
- Flow control: reading pauses while more than `HIGH_WATER` bytes wait for a slow reader
  (`engine_connection.Connection`, one connection's protocol and parser).
- Not here: HTTP/2, proxies, redirects, cookies, compression (`accept-encoding` is not sent),
  `Expect: 100-continue`, a body delimited by the connection's close (httptools cannot be told
  the stream ended: it reads as a connection lost; uvicorn, vLLM and SGLang always send a length
  or chunks). `https://` engines are reached with the system's default TLS context.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from warmroute.gateway.engine_connection import Connection
from warmroute.gateway.engine_request import Origin, request_head
from warmroute.gateway.upstream import KEEPALIVE_S, MAX_CONNECTIONS, UpstreamError, UpstreamPoolFull

MAX_URLS = 4096  # parsed request targets kept


class LeanResponse:
    """An engine's answer: status and headers in, the body read whole or as it comes."""

    def __init__(self, conn: Connection, client: LeanUpstream, bounded: bool) -> None:
        self._conn: Connection | None = conn
        self._client = client
        self._bounded = bounded
        self.status: int = conn.status
        self.headers: Mapping[str, str] = Headers(raw=conn.raw_headers)

    @property
    def ended(self) -> bool:  # the whole body in and taken: nothing left to drain
        conn = self._conn
        return conn is None or (conn.complete and not conn.body)

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
