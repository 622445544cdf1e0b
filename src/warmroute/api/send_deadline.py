"""A gRPC stream whose client reads nothing is dropped after `send_timeout_s`, as the HTTP
server drops such a connection (`server_protocol.TimedProtocol`): grpc's HTTP/2 flow control
holds a message its client has no window for, and the handler waits there for ever, holding its
engine's place. `within_send_deadline` wraps a handler's messages: while one waits to be taken
for sending longer than the deadline, the handler's task is cancelled (the RPC ends CANCELLED,
and the handler's own clean-up runs: its stream is billed what was sent and its engine freed).
One timer per stream, armed when none is and moved on when it fires early (no timer per
message)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

from warmroute.gateway.engine_connection import TIMER_RESOLUTION_S

T = TypeVar("T")


class SendDeadline:
    """Cancels the task it was made in once one message has waited `timeout_s` to be sent."""

    def __init__(self, timeout_s: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task, self.loop, self.timeout_s = task, task.get_loop(), timeout_s
        self.since: float | None = None  # when the message now being sent was handed over
        self.timer: asyncio.TimerHandle | None = None

    def sending(self) -> None:
        self.since = self.loop.time()
        if self.timer is None:
            self.timer = self.loop.call_at(self.since + self.timeout_s, self._check)

    def sent(self) -> None:
        self.since = None

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _check(self) -> None:
        self.timer = None
        since = self.since
        if since is None:
            return  # nothing waits: the next message arms it again
        if self.loop.time() >= since + self.timeout_s - TIMER_RESOLUTION_S:
            self.task.cancel("the client read nothing of its stream for its send deadline")
        else:
            self.timer = self.loop.call_at(since + self.timeout_s, self._check)


async def within_send_deadline(messages: AsyncGenerator[T, None], timeout_s: float
                               ) -> AsyncIterator[T]:
    """`messages`, each of which its client must take within `timeout_s` of its turn."""
    deadline = SendDeadline(timeout_s)
    try:
        async for message in messages:
            deadline.sending()
            yield message
            deadline.sent()
    finally:
        deadline.close()
        await messages.aclose()
