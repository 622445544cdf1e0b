"""A client that never reads its stream holds no engine place for long (`send_timeout_s`, as
nginx's `send_timeout`): through a real gateway over a simulated engine that answers at once,
a stream whose client reads nothing is dropped once the gateway has held its unsent bytes for
the timeout; the engine's place and the gateway's in-flight count are freed, what was sent is
billed, and the gateway answers the next client as before. The same over gRPC."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from tests.gateway.harness import gateway_over
from tests.gateway.inprocess import in_process_gateway, ledger, until
from tests.gateway.scripted import ScriptedFleet
from tests.procs import free_port
from warmroute.bench.fleet import EngineParams, SimFleet
from warmroute.config import EngineEndpoint
from warmroute.gateway.membership import EngineState

SEND_TIMEOUT_S = 2.0
MAX_TOKENS = 60_000  # megabytes of events: far more than the sockets' buffers hold


@pytest.fixture
def instant_engine(tmp_path: Path) -> Iterator[EngineEndpoint]:
    fleet = SimFleet(EngineParams(count=1, prefill_ms_per_token=0.0, decode_ms_per_token=0.0),
                     tmp_path / "engine-logs")
    fleet.start("stalled-readers")
    try:
        yield EngineEndpoint(fleet.urls[0], fleet.ids[0])
    finally:
        fleet.stop()


def stalled_stream(port: int) -> socket.socket:
    """A client that asks for a long stream, keeps its receive buffer small, and reads nothing."""
    body = json.dumps({"model": "sim", "stream": True, "max_tokens": MAX_TOKENS,
                       "messages": [{"role": "user", "content": "Tell me everything."}]})
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
                   f"{body}".encode())
    return client


def read_to_the_end(client: socket.socket, timeout_s: float) -> bytes:
    """What the gateway sent before it dropped the connection (a reset or the end of it)."""
    client.settimeout(timeout_s)
    received = bytearray()
    try:
        while piece := client.recv(65536):
            received += piece
    except ConnectionResetError:
        pass
    return bytes(received)


def held_until_dropped(client: socket.socket, state: EngineState) -> tuple[float, bytes]:
    """How long the engine's place was held after the stalled `client`'s request reached it,
    and what the gateway had sent it when it was dropped; the client is closed."""
    try:
        deadline = time.monotonic() + 30
        while state.in_flight == 0:  # the request reached its engine
            assert time.monotonic() < deadline, "the answer never started"
            time.sleep(0.01)
        opened = time.monotonic()
        while state.in_flight:
            assert time.monotonic() < deadline, "the stalled client was never dropped"
            time.sleep(0.02)
        return time.monotonic() - opened, read_to_the_end(client, 10.0)
    finally:
        client.close()


def test_a_client_that_reads_nothing_is_dropped_and_frees_its_engine(
        instant_engine: EngineEndpoint, tmp_path: Path) -> None:
    with gateway_over((instant_engine,), data_dir=tmp_path,
                      send_timeout_s=SEND_TIMEOUT_S) as (url, gateway):
        state = gateway.membership.engines[instant_engine.engine_id]
        held, sent = held_until_dropped(stalled_stream(int(url.rsplit(":", 1)[1])), state)
        assert held >= SEND_TIMEOUT_S - 0.1  # not before its client had stalled that long
        assert sent.startswith(b"HTTP/1.1 200") and b"data: {" in sent
        assert b"data: [DONE]" not in sent  # cut off, not finished
        answer = httpx.post(url + "/v1/chat/completions", timeout=30, json={
            "model": "sim", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200
        deadline = time.monotonic() + 10
        while len(rows := ledger(Path(gateway.config.store_url))) < 2:
            assert time.monotonic() < deadline, "the cut-off stream was never billed"
            time.sleep(0.05)
    cut_off, normal = rows
    assert 0 < cut_off.completion_tokens < MAX_TOKENS  # what was made before it was dropped
    assert (normal.completion_tokens, normal.surface) == (4, "chat.completions")


def stalled_socket(port: int) -> socket.socket:
    """A WebSocket client of `/v1/responses` that asks for a long response, keeps its receive
    buffer small, and reads nothing after the handshake (frames written by hand)."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.sendall(b"GET /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                   b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   b"Sec-WebSocket-Version: 13\r\n\r\n")
    client.settimeout(10.0)
    head = b""
    while b"\r\n\r\n" not in head:
        byte = client.recv(1)  # the handshake's answer alone, nothing after it
        assert byte, f"the gateway closed the socket during its handshake: {head!r}"
        head += byte
    assert head.startswith(b"HTTP/1.1 101"), head
    message = json.dumps({"type": "response.create", "model": "sim",
                          "max_output_tokens": MAX_TOKENS, "input": "Tell me everything."})
    client.sendall(masked_text_frame(message.encode()))
    return client


def masked_text_frame(payload: bytes) -> bytes:
    """One WebSocket text frame as a client sends it (RFC 6455: masked), under 64 KiB."""
    assert len(payload) < 65536
    mask = os.urandom(4)
    length = bytes([0x80 | len(payload)]) if len(payload) < 126 else (
        bytes([0x80 | 126]) + len(payload).to_bytes(2, "big"))
    return b"\x81" + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_a_websocket_client_that_reads_nothing_is_dropped_and_frees_its_engine(
        instant_engine: EngineEndpoint, tmp_path: Path) -> None:
    """uvicorn's keepalive ping would only close the socket politely, after the unsent bytes
    that never leave: the send deadline drops it, its response is cancelled and billed."""
    with gateway_over((instant_engine,), data_dir=tmp_path,
                      send_timeout_s=SEND_TIMEOUT_S) as (url, gateway):
        state = gateway.membership.engines[instant_engine.engine_id]
        held, sent = held_until_dropped(stalled_socket(int(url.rsplit(":", 1)[1])), state)
        assert held >= SEND_TIMEOUT_S - 0.1
        assert b"response.output_text.delta" in sent and b"response.completed" not in sent
        deadline = time.monotonic() + 10
        while not (rows := ledger(Path(gateway.config.store_url))):
            assert time.monotonic() < deadline, "the dropped response was never billed"
            time.sleep(0.05)
    [row] = rows
    assert row.surface == "responses.ws" and 0 < row.completion_tokens < MAX_TOKENS


async def test_a_grpc_client_that_reads_nothing_is_dropped_and_frees_its_engine(
        tmp_path: Path) -> None:
    """The same over the xAI gRPC API: grpc's flow control holds the stream's messages once
    its client's window is full; `send_timeout_s` later its handler is cancelled, the engine's
    place freed, and what was made billed."""
    from xai_sdk.proto import chat_pb2, chat_pb2_grpc

    port = free_port()
    fleet = ScriptedFleet("e1")
    fleet["e1"].pieces = [" word"] * 200_000  # megabytes of chunks
    state = None
    async with in_process_gateway(fleet, tmp_path, grpc_port=port,
                                  send_timeout_s=SEND_TIMEOUT_S) as gw:
        state = gw.gateway.membership.engines["e1"]
        options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 4096)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            request = chat_pb2.GetCompletionsRequest(
                model="scripted-model", max_tokens=300_000,
                messages=[chat_pb2.Message(role=chat_pb2.ROLE_USER,
                                           content=[chat_pb2.Content(text="everything")])])
            call = chat_pb2_grpc.ChatStub(channel).GetCompletionChunk(request)
            await until(lambda: state.in_flight == 1, "the stream at its engine", 10.0)
            opened = time.monotonic()
            await until(lambda: state.in_flight == 0, "the stalled stream dropped", 30.0)
            held = time.monotonic() - opened
            await until(lambda: len(gw.ledger()) == 1, "the dropped stream's row")
            rows = gw.ledger()
            call.cancel()
    assert held >= SEND_TIMEOUT_S - 0.1
    [row] = rows
    assert row.surface == "grpc" and 0 < row.completion_tokens < 200_000
