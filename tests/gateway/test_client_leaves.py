"""A client that closes its connection stops its work, through a real gateway's server (its
protocol tells the handler, `connection_events`) over a real engine: the engine stops generating
and frees the request's blocks, the gateway's slot is released, and a stream cut off mid-answer
is in the ledger with what was made before it stopped."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from tests.gateway.harness import Fleet, chat_body, gateway_over, opening, wait_for
from tests.gateway.inprocess import ledger

BUDGET = 3000


def post(url: str, body: dict[str, object]) -> socket.socket:
    """A raw client that can close its connection whenever the test says: the request sent."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    payload = json.dumps(body).encode()
    conn = socket.create_connection((host, int(port)), timeout=30)
    conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\n"
                 b"content-type: application/json\r\nx-grok-conv-id: leaver\r\n"
                 b"content-length: %d\r\n\r\n%s" % (host.encode(), len(payload), payload))
    return conn


def send_and_read_until(url: str, body: dict[str, object], marker: bytes) -> socket.socket:
    """The request sent, its answer read until `marker`; returns the socket."""
    conn = post(url, body)
    received = b""
    while marker not in received:
        piece = conn.recv(65536)
        assert piece, f"the connection closed first: {received[-300:]!r}"
        received += piece
    return conn


def engine_idle(fleet: Fleet, engine_id: str) -> bool:
    stats = fleet.cache_stats(engine_id)
    return stats["running"] == 0 and stats["waiting"] == 0 and stats["blocks_used"] == 0


def test_a_stream_whose_client_closes_stops_its_engine_and_is_billed(
    fleet: Fleet, tmp_path: Path,
) -> None:
    engine_id = fleet.ids[0]
    with gateway_over(fleet.endpoints()[:1], data_dir=tmp_path) as (url, gateway):
        generated = fleet.cache_stats(engine_id)["generated_tokens"]
        body = chat_body(opening("Tell me everything about caches."), max_tokens=BUDGET,
                         stream=True)
        conn = send_and_read_until(url, body, b'"content":')
        assert fleet.cache_stats(engine_id)["running"] == 1
        conn.close()
        wait_for(lambda: engine_idle(fleet, engine_id), 20, "the engine to stop the request")
        wait_for(lambda: gateway.membership.loads().get(engine_id) == 0, 5, "the slot released")
        wait_for(lambda: len(ledger(tmp_path / "warmroute.db")) == 1, 10, "the cut-off's row")
        made = fleet.cache_stats(engine_id)["generated_tokens"] - generated
    [row] = ledger(tmp_path / "warmroute.db")
    assert (row.surface, row.engine_id) == ("chat.completions", engine_id)
    assert row.prompt_tokens > 0
    assert 1 <= row.completion_tokens <= made < BUDGET  # stopped long before its budget


def test_a_json_request_whose_client_closes_stops_its_engine(
    fleet: Fleet, tmp_path: Path,
) -> None:
    engine_id = fleet.ids[0]
    with gateway_over(fleet.endpoints()[:1], data_dir=tmp_path) as (url, gateway):
        generated = fleet.cache_stats(engine_id)["generated_tokens"]
        body = chat_body(opening("Tell me everything about routers."), max_tokens=BUDGET)
        with post(url, body):
            wait_for(lambda: fleet.cache_stats(engine_id)["generated_tokens"] > generated + 8,
                     20, "the engine generating the answer")
        wait_for(lambda: engine_idle(fleet, engine_id), 20, "the engine to stop the request")
        wait_for(lambda: gateway.membership.loads().get(engine_id) == 0, 5, "the slot released")
        assert fleet.cache_stats(engine_id)["generated_tokens"] - generated < BUDGET
        time.sleep(0.3)  # a row would be written at once: none is (no answer was delivered)
    assert ledger(tmp_path / "warmroute.db") == []
