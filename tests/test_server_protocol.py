"""The servers' protocol writes a response's head with its body's first bytes: one write, not
two (`server_protocol.HeadCork`). A fake transport records the writes (units of the one
module), first of the cork alone, then of uvicorn's protocol as the servers run it."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from warmroute.procs import header_timeout_protocol
from warmroute.server_protocol import MAX_JOINED_BYTES, HeadCork


class Transport:
    """What a protocol is given to write to: the writes, in order, and whether it closed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "a write after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closing = self.closed = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_protocol(self) -> Any:
        return None


async def test_a_head_leaves_with_the_first_body_in_one_write() -> None:
    transport = Transport()
    cork = HeadCork(transport, asyncio.get_running_loop())
    cork.write(b"HEAD ")
    cork.write(b"body")
    cork.write(b" more")
    await asyncio.sleep(0)
    assert transport.writes == [b"HEAD body", b" more"]


async def test_a_head_alone_leaves_at_the_loops_next_turn() -> None:
    transport = Transport()
    cork = HeadCork(transport, asyncio.get_running_loop())
    cork.write(b"HEAD ")
    assert transport.writes == []
    await asyncio.sleep(0)
    assert transport.writes == [b"HEAD "]
    cork.write(b"body")
    assert transport.writes == [b"HEAD ", b"body"]


async def test_an_interim_answer_leaves_at_once_and_the_head_after_it_is_held() -> None:
    transport = Transport()
    cork = HeadCork(transport, asyncio.get_running_loop())
    cork.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    cork.write(b"HTTP/1.1 200 OK\r\n\r\n")
    cork.write(b"body")
    assert transport.writes[1:] == [b"HTTP/1.1 200 OK\r\n\r\nbody"]


async def test_closing_writes_the_held_head_first() -> None:
    transport = Transport()
    cork = HeadCork(transport, asyncio.get_running_loop())
    cork.write(b"HEAD ")
    cork.close()
    await asyncio.sleep(0)
    assert (transport.writes, transport.closed) == ([b"HEAD "], True)


async def test_a_head_held_for_a_lost_connection_is_dropped() -> None:
    transport = Transport()
    cork = HeadCork(transport, asyncio.get_running_loop())
    cork.write(b"HEAD ")
    transport.closing = True  # lost before the loop turned
    await asyncio.sleep(0)
    assert transport.writes == []
    assert cork.is_closing()  # the rest of the transport is the connection's


def served(app: Any) -> tuple[Any, Transport]:
    """The servers' HTTP protocol (`procs.header_timeout_protocol`) serving `app` on a new
    connection over a recording transport."""
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    config.load()
    protocol = header_timeout_protocol(10.0)(config=config, server_state=ServerState(),
                                              app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A JSON answer, as Starlette's `Response` sends one: its head, then its body."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


async def test_the_servers_protocol_answers_in_one_write() -> None:
    protocol, transport = served(answer)
    for _ in range(2):  # requests on one connection, each answered in one write
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        for _ in range(5):
            await asyncio.sleep(0)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n" * 2)  # pipelined
    for _ in range(10):
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    assert len(transport.writes) == 4
    for written in transport.writes:
        assert written.startswith(b"HTTP/1.1 200 OK\r\n")
        assert written.endswith(b'\r\n\r\n{"ok":true}')


async def test_a_head_answer_is_written_whole_before_the_server_shuts_down() -> None:
    """A HEAD answer writes no body after its head: nothing holds it back, and a server
    shutting down right after it still writes it before closing the connection."""
    protocol, transport = served(answer)
    protocol.data_received(b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n")
    await asyncio.sleep(0)  # the answer's task runs; nothing else turns
    protocol.shutdown()
    assert transport.closed
    [written] = transport.writes
    assert written.startswith(b"HTTP/1.1 200 OK\r\n") and written.endswith(b"\r\n\r\n")


async def test_the_servers_protocol_writes_a_held_head_before_it_shuts_down() -> None:
    """A stream's head waits for its first event; a shutdown meanwhile writes it first, and
    the stream's end then closes the connection."""
    go_on = asyncio.Event()

    async def stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await go_on.wait()
        await send({"type": "http.response.body", "body": b"end"})

    protocol, transport = served(stream)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    await asyncio.sleep(0)  # the answer's task sends its head; the loop turns no further
    assert transport.writes == []  # held
    protocol.shutdown()
    assert [w[:17] for w in transport.writes] == [b"HTTP/1.1 200 OK\r\n"]
    go_on.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert transport.writes[1:] == [b"3\r\nend\r\n0\r\n\r\n"] and transport.closed


async def test_a_big_first_body_is_not_copied_to_join_its_head() -> None:
    transport = Transport()
    cork = HeadCork(transport, asyncio.get_running_loop())
    body = b"x" * (MAX_JOINED_BYTES + 1)
    cork.write(b"HEAD ")
    cork.write(body)
    assert transport.writes == [b"HEAD ", body]
    assert transport.writes[1] is body
