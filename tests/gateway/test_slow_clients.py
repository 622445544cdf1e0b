"""Slow clients hold nothing up (issue 13, must show 6), through a real gateway over a real
engine: 200 connections sending their request heads a byte a second do not delay a normal
request by more than half its usual time, and each is closed once its head is
`header_timeout_s` late; a body that trickles in is answered 408 at its deadline."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx
import pytest

from tests.gateway.harness import Fleet, chat_body, gateway_over, opening

pytestmark = pytest.mark.slow
SLOW_CLIENTS = 200
HEADER_TIMEOUT_S = 6.0
HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"content-type: application/json\r\n")


async def drip(port: int, closed: list[float], stop: asyncio.Event) -> None:
    """A client sending its head a byte a second; notes when the server closed it (timed from
    before connecting: the server's timer starts later, never earlier, so a busy client loop
    can only make the close look later)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for byte in HEAD:
            if stop.is_set():
                return
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), 1.0) == b"":
                    break  # closed by the server
            except TimeoutError:
                continue
        closed.append(time.monotonic() - started)
    except ConnectionError:
        closed.append(time.monotonic() - started)
    finally:
        writer.close()


async def usual_times(client: httpx.AsyncClient, rounds: int) -> list[float]:
    times = []
    for index in range(rounds):
        started = time.monotonic()
        answer = await client.post("/v1/chat/completions", json=chat_body(
            opening(f"A normal request, number {index % 3}.")), headers={"x-grok-conv-id": "n"})
        assert answer.status_code == 200
        times.append(time.monotonic() - started)
    return times


async def test_two_hundred_slow_heads_do_not_delay_a_normal_request(
    fleet: Fleet, tmp_path: Path
) -> None:
    with gateway_over(fleet.endpoints()[:1], data_dir=tmp_path,
                      header_timeout_s=HEADER_TIMEOUT_S) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await usual_times(client, 5)  # warm: the prompt's blocks cached, connections open
            alone = await usual_times(client, 15)
            stop, closed = asyncio.Event(), []
            slow = [asyncio.ensure_future(drip(port, closed, stop)) for _ in range(SLOW_CLIENTS)]
            await asyncio.sleep(2.0)  # every slow client connected and dripping
            beside = await usual_times(client, 15)
            await asyncio.wait_for(asyncio.gather(*slow), HEADER_TIMEOUT_S + 10)
    usual, delayed = statistics.median(alone), statistics.median(beside)
    assert delayed <= 1.5 * usual, (usual, delayed)
    assert len(closed) == SLOW_CLIENTS  # every slow head was cut off ...
    assert min(closed) >= HEADER_TIMEOUT_S - 1 and max(closed) <= HEADER_TIMEOUT_S + 3  # in time


async def test_a_trickling_body_is_408_at_its_deadline(fleet: Fleet, tmp_path: Path) -> None:
    body = b'{"messages": [{"role": "user", "content": "hi"}]}'
    with gateway_over(fleet.endpoints()[:1], data_dir=tmp_path, body_timeout_s=2.0) as (url, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        started = time.monotonic()
        writer.write(HEAD + f"content-length: {len(body)}\r\n\r\n".encode() + body[:10])
        await writer.drain()  # and the rest never comes
        answer = await asyncio.wait_for(reader.read(4096), 10)
        elapsed = time.monotonic() - started
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(payload) == {"code": "Deadline expired before operation could complete",
                                   "error": "the request body did not arrive within 2 s"}
    assert 2.0 - 0.002 <= elapsed < 4.0  # uvloop's timers count whole milliseconds
