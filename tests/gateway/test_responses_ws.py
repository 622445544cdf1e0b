"""Responses over a WebSocket (`/v1/responses` upgraded, issue 17) through a real gateway over
real engines, with the `websockets` client: a `generate: false` pre-warm fills the engine's
cache for the turn that follows (exact cached tokens), a `store: false` chain lives on its
socket, closing the socket mid-generation frees the engine, bad input gets an error event on a
socket that stays open, a socket without a valid key is refused at the upgrade, and a socket
open longer than the head timeout still answers."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.gateway.harness import MODEL, SYSTEM_PROMPT, Fleet, gateway_over, wait_for
from tests.gateway.inprocess import make_keys
from warmroute.gateway.gateway import Gateway

BLOCK = 16
DOCUMENT = " ".join(f"Line {i}: the cache holds block {i * 7 % 31} of the prompt."
                    for i in range(40))


@pytest.fixture
def gateway(fleet: Fleet, tmp_path: Path) -> Iterator[tuple[str, Gateway]]:
    with gateway_over(fleet.endpoints(), data_dir=tmp_path) as running:
        yield running


def socket(url: str, conv: str | None = None, **headers: str) -> ClientConnection:
    extra = {**headers, **({"x-grok-conv-id": conv} if conv else {})}
    return connect(url.replace("http://", "ws://") + "/v1/responses", additional_headers=extra,
                   proxy=None, open_timeout=10)


def create(ws: ClientConnection, **body: Any) -> list[dict[str, Any]]:
    """Send one `response.create`; its events, up to `response.completed` or an error."""
    ws.send(json.dumps({"type": "response.create", "model": MODEL, **body}))
    events: list[dict[str, Any]] = []
    while True:
        event = json.loads(ws.recv(timeout=60))
        events.append(event)
        if event["type"] in ("response.completed", "error"):
            return events


def completed(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert events[-1]["type"] == "response.completed", events[-1]
    response: dict[str, Any] = events[-1]["response"]
    return response


def session_prompt() -> list[dict[str, str]]:
    return [{"role": "system", "content": f"Session {uuid.uuid4()}. {SYSTEM_PROMPT}"},
            {"role": "user", "content": DOCUMENT}]


def generation_prompt_tokens(url: str) -> int:
    """The tokens a prompt ends with when it asks for a reply (the chat template's assistant
    header), counted by the gateway's own tokenize route."""
    answer = httpx.post(url + "/v1/tokenize-text",
                        json={"text": "<|im_start|>assistant\n", "model": MODEL})
    return len(answer.json()["token_ids"])


def test_prewarm_fills_the_cache_for_the_next_turn(gateway: tuple[str, Gateway]) -> None:
    """Pre-warm, then the same prompt plus a question: sent whole, or chained from the warm-up
    (each after a warm-up of its own)."""
    url, _ = gateway
    question = {"role": "user", "content": "What does line 3 hold?"}
    with socket(url, f"ws-warm-{uuid.uuid4()}") as ws:
        for chained in (False, True):
            prompt = session_prompt()
            warm_events = create(ws, input=prompt, generate=False, store=False)
            assert [e["type"] for e in warm_events] == [
                "response.created", "response.in_progress", "response.completed"]
            warm = completed(warm_events)
            assert warm["output"] == [] and warm["status"] == "completed"
            assert warm["usage"]["output_tokens"] == 0
            assert warm["usage"]["input_tokens_details"]["cached_tokens"] == 0
            body = ({"input": [question], "previous_response_id": warm["id"], "store": False}
                    if chained else {"input": [*prompt, question]})
            turn = completed(create(ws, max_output_tokens=4, temperature=0, **body))
            # The warm-up's prompt ends with the assistant header; the next turn shares its
            # first token (`<|im_start|>`), then goes on with the question.
            warmed = warm["usage"]["input_tokens"] - generation_prompt_tokens(url)
            cached = turn["usage"]["input_tokens_details"]["cached_tokens"]
            assert cached == BLOCK * ((warmed + 1) // BLOCK)
            assert cached >= BLOCK * (warmed // BLOCK) > 0


def test_unstored_chain_lives_on_its_socket(gateway: tuple[str, Gateway]) -> None:
    url, _ = gateway
    with socket(url) as ws:
        first = completed(create(ws, input=session_prompt(), max_output_tokens=6,
                                 temperature=0, store=False))
        events = create(ws, input=[{"role": "user", "content": "Say more."}],
                        previous_response_id=first["id"], max_output_tokens=6, temperature=0,
                        store=False)
        kinds = [e["type"] for e in events]
        assert kinds[:4] == ["response.created", "response.in_progress",
                             "response.output_item.added", "response.content_part.added"]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        second = completed(events)
        usage, previous = second["usage"], first["usage"]
        assert usage["input_tokens_details"]["cached_tokens"] == BLOCK * (
            (previous["input_tokens"] + previous["output_tokens"] - 1) // BLOCK)
        assert second["previous_response_id"] == first["id"]
    # Nothing of it is stored: over HTTP, and on another socket, the chain is unknown.
    missing = httpx.post(url + "/v1/responses", json={
        "model": MODEL, "input": "Go on.", "previous_response_id": first["id"]})
    assert missing.status_code == 404
    with socket(url) as other:
        error = create(other, input="Go on.", previous_response_id=first["id"])[-1]
    assert error["type"] == "error" and error["status"] == 404


def test_closing_mid_generation_frees_the_engine(fleet: Fleet, tmp_path: Path) -> None:
    engine = fleet.ids[0]
    with gateway_over(fleet.endpoints()[:1], data_dir=tmp_path) as (url, gw):
        before = fleet.cache_stats(engine)["generated_tokens"]
        ws = socket(url)
        ws.send(json.dumps({"type": "response.create", "model": MODEL, "temperature": 1.0,
                            "input": "Write a very long story.", "max_output_tokens": 3000}))
        while json.loads(ws.recv(timeout=60))["type"] != "response.output_text.delta":
            pass
        ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "Too soon."}))
        busy = next(e for e in (json.loads(ws.recv(timeout=60)) for _ in range(100))
                    if e["type"] == "error")
        assert busy["status"] == 400 and "already in progress" in busy["message"]
        assert gw.membership.engines[engine].in_flight == 1
        ws.close()
        wait_for(lambda: gw.membership.engines[engine].in_flight == 0, 10, "the gateway slot")
        wait_for(lambda: fleet.cache_stats(engine)["running"] == 0, 10, "the engine's sequence")
        generated = fleet.cache_stats(engine)["generated_tokens"] - before
        assert 0 < generated < 3000


def test_bad_input_gets_an_error_event_and_the_socket_stays_open(
        gateway: tuple[str, Gateway]) -> None:
    url, _ = gateway
    with socket(url) as ws:
        ws.send("{not json")
        assert json.loads(ws.recv(timeout=30))["status"] == 400
        wrong = create(ws, input="hi", temperature=9)[-1]
        assert wrong["type"] == "error" and wrong["status"] == 400
        assert wrong["code"] == "Client specified an invalid argument"
        ws.send(json.dumps({"type": "session.update"}))
        assert "response.create" in json.loads(ws.recv(timeout=30))["message"]
        answer = completed(create(ws, input="Still here?", max_output_tokens=3))
        assert answer["usage"]["output_tokens"] > 0


def test_upgrade_needs_a_valid_key(fleet: Fleet, tmp_path: Path) -> None:
    secret, _ = asyncio.run(make_keys(tmp_path, ws={"team": "team-ws"}))["ws"]
    with gateway_over(fleet.endpoints()[:1], data_dir=tmp_path, require_api_keys=True) as (
            url, _):
        with pytest.raises(InvalidStatus) as refused:
            socket(url)
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body)["code"] == (
            "The request does not have valid authentication credentials")
        with socket(url, authorization=f"Bearer {secret}") as ws:
            assert completed(create(ws, input="hi", max_output_tokens=2))["status"] in (
                "completed", "incomplete")



def test_a_socket_is_used_long_after_the_header_timeout(fleet: Fleet, tmp_path: Path) -> None:
    """The gateway's head timer is for a request's head: a socket that stays open past it
    still answers (the timer closed every socket `header_timeout_s` after it opened)."""
    with (gateway_over(fleet.endpoints(), data_dir=tmp_path, header_timeout_s=1.0) as (url, _),
          socket(url, conv="a-long-session") as ws):
        first = completed(create(ws, input="Say hello.", max_output_tokens=4))
        time.sleep(2.5)  # past the head timeout, twice
        second = completed(create(ws, input="Say hello again.", max_output_tokens=4))
    assert first["usage"]["output_tokens"] > 0
    assert second["usage"]["output_tokens"] > 0
