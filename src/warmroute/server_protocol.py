"""The HTTP/1.1 protocol warmroute's servers run under uvicorn: uvicorn's own, with a timer from
a request's first byte to its last header (a new request object appears on the protocol when
its headers are complete; a connection upgraded to a WebSocket has left the protocol, and the
timer with it), and the connection's `ConnectionEvents` in its requests' scopes (its loss told
to the handlers that registered for it, with no task listening: with httptools every request;
else those whose head arrives in `data_received`, and the others' handlers listen).

With `send_timeout_s`, a second timer runs while the transport holds writing (its buffer full:
the client reads nothing), as nginx's `send_timeout`: when it fires the connection is dropped,
and its handler hears of it as of any client that left (a stream stops, is billed what was
sent, and frees its engine), so a client that never reads cannot hold an engine's place. It
costs nothing per request: the transport tells the protocol only when its buffer fills. A
WebSocket (`TimedWebSocketProtocol`, uvicorn's own) has the same timer: uvicorn's keepalive
ping only closes a socket politely, and a polite close waits for a buffer that never drains.

Each response's head is held until its body's first bytes (`HeadCork`, for one turn of the
event loop at most): a JSON answer, or a stream whose first event is in hand, leaves in one
write instead of two: one system call and one wake-up of its client fewer.

Imported only when a server starts (`procs.header_timeout_protocol` and
`procs.send_timeout_websocket` set the timeouts).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from warmroute.connection_events import ConnectionEvents, give_connection_events


class SendDeadline:
    """A protocol's send deadline, mixed in before uvicorn's protocol: while its transport
    holds writing for `send_timeout_s` (None: for ever), the connection is dropped."""

    send_timeout_s: float | None = None
    send_timer: Any = None
    loop: Any
    transport: Any

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        if self.send_timeout_s is not None and self.send_timer is None:
            self.send_timer = self.loop.call_later(self.send_timeout_s, self.not_reading)

    def resume_writing(self) -> None:
        self.disarm_send()
        super().resume_writing()  # type: ignore[misc]

    def not_reading(self) -> None:
        self.send_timer = None
        if self.transport is not None:
            self.transport.abort()  # what waits to be sent never will be (even once closing)

    def disarm_send(self) -> None:
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None


class TimedWebSocketProtocol(SendDeadline, WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with the send deadline (`procs.send_timeout_websocket`)."""

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm_send()
        super().connection_lost(exc)


class TimedProtocol(SendDeadline, AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """Served as a subclass that sets the two timeouts (`procs.header_timeout_protocol`)."""

    head_timeout_s: float
    header_timer: Any = None
    events: ConnectionEvents

    def connection_made(self, transport: Any) -> None:
        self.events = ConnectionEvents()
        super().connection_made(transport)
        self.events.resume_reading = self.flow.resume_reading
        self.arm()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        if self.header_timer is None and (before is None or before.response_complete):
            self.arm()  # a new request head begins
        super().data_received(data)
        if self.cycle is not before:
            self.disarm()  # its headers are complete
            give_connection_events(self.cycle.scope, self.events)  # before its task runs
        elif self.transport.get_protocol() is not self:
            self.disarm()  # upgraded to a WebSocket: its head was whole

    def on_headers_complete(self) -> None:  # httptools (uvicorn's h11 protocol: no cork)
        super().on_headers_complete()  # each request's cycle, pipelined ones too
        self.cork(self.cycle)

    def cork(self, cycle: Any) -> None:
        """Hold the answer's head for its body (once; not a HEAD answer's: no body follows)."""
        if (cycle is not None and not isinstance(cycle.transport, HeadCork)
                and cycle.scope["method"] != "HEAD"):
            cycle.transport = HeadCork(self.transport, self.loop)

    def shutdown(self) -> None:
        cycle = self.cycle
        if cycle is not None and isinstance(cycle.transport, HeadCork):
            cycle.transport.flush()  # a held head goes out before the connection closes
        super().shutdown()

    def on_message_begin(self) -> None:  # httptools: each request's scope, pipelined too
        super().on_message_begin()
        give_connection_events(self.scope, self.events)

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        self.disarm_send()
        try:
            super().connection_lost(exc)
        finally:
            self.events.connection_lost()

    def arm(self) -> None:
        self.header_timer = self.loop.call_later(self.head_timeout_s, self.too_slow)

    def disarm(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def too_slow(self) -> None:
        self.header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


MAX_JOINED_BYTES = 64 * 1024  # a first body write this big is not copied to join its head


class HeadCork:
    """One response's view of its connection: its head (the first write) is held until its
    body's first bytes are written, or the event loop's next turn, whichever comes first, so
    that a head and a body sent in one step (a JSON answer; a stream whose first event is in
    hand) leave in one write: one system call, one packet, one wake-up of the client, not two."""

    __slots__ = ("flushing", "head", "loop", "started", "transport")

    def __init__(self, transport: Any, loop: Any) -> None:
        self.transport = transport
        self.loop = loop
        self.head: bytes | None = None
        self.flushing: Any = None
        self.started = False

    def write(self, data: bytes) -> None:
        if not self.started:
            if data[9:10] == b"1":  # an interim answer (`100 Continue`): the client waits for it
                self.transport.write(data)
                return
            self.started = True
            self.head = data
            self.flushing = self.loop.call_soon(self.flush)
            return
        if self.head is not None:
            head, self.head = self.head, None
            self.flushing.cancel()
            if len(data) > MAX_JOINED_BYTES:  # a big body: two writes, not a copy of it
                self.transport.write(head)
            else:
                data = head + data
        self.transport.write(data)

    def flush(self) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            if not self.transport.is_closing():  # lost meanwhile: nothing to write to
                self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)
