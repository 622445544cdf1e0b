"""What the HTTP server tells a request's handler about its connection, with no task per request.

An ASGI handler learns that its client went away only by awaiting `receive()` until it says
`http.disconnect`, so a handler that must stop when its client leaves keeps a task listening for
the whole request (three task steps and a cancellation each time, on the hottest route). The
gateway's server protocol (`procs.header_timeout_protocol`) keeps one `ConnectionEvents` per
connection instead and puts it in each request's scope (`scope["extensions"][EXTENSION]`); a
handler registers a callback, which runs once, from the transport's `connection_lost`. Where
the server gives none (another server, a test's transport), handlers listen as before.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

EXTENSION = "warmroute.connection"


class ConnectionEvents:
    """One client connection's loss, told to whoever registered for it."""

    __slots__ = ("_callbacks", "lost")

    def __init__(self) -> None:
        self.lost = False
        self._callbacks: list[Callable[[], None]] = []

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Run `callback` once when the connection is lost (at once if it is already)."""
        if self.lost:
            callback()
        else:
            self._callbacks.append(callback)

    def discard(self, callback: Callable[[], None]) -> None:
        """`callback` is no longer wanted (nothing happens if it ran or was never added)."""
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def connection_lost(self) -> None:
        """The transport lost the connection: every registered callback runs, once."""
        self.lost = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


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
