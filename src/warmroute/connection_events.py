"""What the HTTP server tells a request's handler about its connection, with no task per request.

An ASGI handler learns that its client went away only by awaiting `receive()` until it says
`http.disconnect`, so a handler that must stop when its client leaves keeps a task listening for
the whole request (three task steps and a cancellation each time, on the hottest route). The
gateway's server protocol (`server_protocol.TimedProtocol`) keeps one `ConnectionEvents` per
connection instead and puts it in each request's scope (`scope["extensions"][EXTENSION]`; with
httptools every request's, pipelined ones too); a handler registers a callback, which runs
once, from the transport's `connection_lost`. A server sees a connection's end only while it
reads from it, and uvicorn stops reading while a large body waits for its handler (only
`receive()` starts it again): registering starts it again too (`resume_reading`), as the
listening task's first `receive()` did. Where the server gives none (another server, a test's
transport), handlers listen as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from typing import Any

EXTENSION = "warmroute.connection"
log = logging.getLogger(__name__)


def _nothing() -> None:
    return None


class ConnectionEvents:
    """One client connection's loss, told to whoever registered for it."""

    __slots__ = ("_callbacks", "lost", "resume_reading")

    def __init__(self, resume_reading: Callable[[], None] = _nothing) -> None:
        self.lost = False
        self.resume_reading = resume_reading  # the server's: a loss is seen only while reading
        self._callbacks: list[Callable[[], None]] = []

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Run `callback` once when the connection is lost (at once if it is already). The
        connection is read meanwhile, so that its loss can be seen."""
        if self.lost:
            callback()
            return
        self._callbacks.append(callback)
        self.resume_reading()

    def discard(self, callback: Callable[[], None]) -> None:
        """`callback` is no longer wanted (nothing happens if it ran or was never added)."""
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def connection_lost(self) -> None:
        """The transport lost the connection: every registered callback runs, once (one that
        raises is logged; the others still run)."""
        self.lost = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a connection-lost callback failed")


def connection_events(scope: MutableMapping[str, Any]) -> ConnectionEvents | None:
    """The request's `ConnectionEvents`, if its server gives them."""
    extensions = scope.get("extensions")
    if extensions is None:
        return None
    events = extensions.get(EXTENSION)
    return events if isinstance(events, ConnectionEvents) else None


def give_connection_events(scope: MutableMapping[str, Any], events: ConnectionEvents) -> None:
    """Put the connection's events in a request's scope (the server's side)."""
    extensions = scope.get("extensions")
    if extensions is None:
        scope["extensions"] = {EXTENSION: events}
    else:
        extensions[EXTENSION] = events
