"""Resuming streams through a real gateway over scripted engines (in-process servers that
stream canned events and then break in a chosen way): what the continuing engine is asked,
what the client receives, the bound on resumes, and the same resume under the Responses API.
Fast: no model, no engine processes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from starlette.responses import StreamingResponse

from tests.gateway.harness import gateway_over, metric, wait_for
from tests.procs import free_port
from warmroute.config import EngineEndpoint
from warmroute.gateway.policies import preference
from warmroute.procs import BackgroundServer

Ending = Literal["done", "early-end", "error-event", "reset"]
CHAT = "/v1/chat/completions"


@dataclass
class Script:
    """One scripted engine: the pieces of text it streams (one token id per character), then
    how its stream ends. Every request body it receives is kept."""

    engine_id: str
    pieces: list[str]
    ending: Ending
    prompt_tokens: int = 20
    cached_tokens: int = 16
    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)

    def chunk(self, **fields: Any) -> bytes:
        head = {"id": f"chatcmpl-{self.engine_id}", "object": "chat.completion.chunk",
                "created": len(self.received), "model": f"model-{self.engine_id}"}
        return f"data: {json.dumps({**head, **fields})}\n\n".encode()

    def usage(self, completion: int) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}

    async def events(self) -> AsyncIterator[bytes]:
        yield self.chunk(choices=[{"index": 0, "delta": {"role": "assistant"}}])
        sent = 0
        for piece in self.pieces:
            sent += len(piece)
            yield self.chunk(
                choices=[{"index": 0, "delta": {"content": piece},
                          "token_ids": [ord(c) for c in piece]}],
                usage=self.usage(sent),
            )
        if self.ending == "early-end":
            return
        if self.ending == "error-event":
            yield b'data: {"code": "Internal error", "error": "engine step failed"}\n\n'
            return
        if self.ending == "reset":
            raise ConnectionResetError("scripted crash")  # the server aborts the connection
        yield self.chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}],
                         usage=self.usage(sent + 1))
        yield self.chunk(choices=[], usage=self.usage(sent + 1))
        yield b"data: [DONE]\n\n"


def scripted_app(script: Script) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(CHAT)
    async def chat(request: Request) -> StreamingResponse:
        script.received.append(await request.json())
        return StreamingResponse(script.events(), media_type="text/event-stream")

    return app


@pytest.fixture
def scripted() -> Iterator[list[Script]]:
    """Three scripted engines s1..s3; a test sets their pieces and endings."""
    scripts = [Script(f"s{i}", [], "done") for i in (1, 2, 3)]
    servers = [BackgroundServer(scripted_app(s), "127.0.0.1", free_port()).start()
               for s in scripts]
    try:
        for script, server in zip(scripts, servers, strict=True):
            script.url = server.url
        yield scripts
    finally:
        for server in servers:
            server.stop()


def endpoints(scripts: list[Script]) -> tuple[EngineEndpoint, ...]:
    return tuple(EngineEndpoint.of(s.url, s.engine_id) for s in scripts)


def in_order(scripts: list[Script]) -> tuple[str, list[Script]]:
    """A routing key and the scripts in its preference order."""
    ids = [s.engine_id for s in scripts]
    key = "scripted-key"
    by_id = {s.engine_id: s for s in scripts}
    return key, [by_id[e] for e in preference(key, ids)]


def sse_events(raw: bytes) -> list[Any]:
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if block:
            payload = block.removeprefix("data: ")
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def stream(url: str, key: str, body: dict[str, Any]) -> tuple[httpx.Response, list[Any]]:
    with httpx.stream("POST", url + CHAT, json=body, headers={"x-grok-conv-id": key},
                      timeout=30) as response:
        return response, sse_events(response.read())


BODY: dict[str, Any] = {
    "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50,
    "stream": True, "stream_options": {"include_usage": True},
}


@pytest.mark.parametrize("ending", ["early-end", "error-event", "reset"])
def test_a_broken_stream_goes_on_on_the_next_engine(
    scripted: list[Script], ending: Ending
) -> None:
    key, (first, second, third) = in_order(scripted)
    first.pieces, first.ending = ["Hel", "lo"], ending
    second.pieces, second.ending = [" wor", "ld"], "done"
    with gateway_over(endpoints(scripted)) as (url, gateway):
        response, events = stream(url, key, BODY)
        metrics = httpx.get(url + "/metrics").text
        assert first.engine_id not in gateway.membership.healthy_ids()
        wait_for(lambda: all(s.in_flight == 0 for s in gateway.membership.engines.values()),
                 5, "every engine slot released")
    assert response.headers["x-warmroute-engine"] == first.engine_id
    # The continuing engine was asked to continue, from the ids, with what budget was left.
    assert second.received == [{
        **BODY,
        "messages": [*BODY["messages"], {"role": "assistant", "content": "Hello"}],
        "max_tokens": 45, "continue_final_message": True, "add_generation_prompt": False,
        "continue_token_ids": [ord(c) for c in "Hello"], "return_token_ids": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "cache_salt": second.received[0]["cache_salt"],
    }]
    assert third.received == []
    chunks = [e for e in events if e != "[DONE]"]
    assert events[-1] == "[DONE]"
    assert {c["id"] for c in chunks} == {"chatcmpl-" + first.engine_id}
    assert {c["model"] for c in chunks} == {"model-" + first.engine_id}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello world"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert sum(1 for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]) == 1
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")) == 1
    assert all("usage" not in c and "token_ids" not in c["choices"][0]
               for c in chunks if c["choices"])
    # 5 delivered tokens, then 6 and an end-of-sequence token from the continuing engine.
    assert chunks[-1]["usage"].pop("cost_in_usd_ticks") > 0  # priced by the gateway
    assert chunks[-1]["usage"] == {"prompt_tokens": 20, "completion_tokens": 5 + 7,
                                   "total_tokens": 32, "prompt_tokens_details": {
                                       "cached_tokens": 16}}
    assert metric(metrics, "warmroute_gateway_stream_resumes_total", outcome="resumed") == 1


def test_resumes_are_bounded_and_end_in_an_error_event(scripted: list[Script]) -> None:
    key, (first, second, third) = in_order(scripted)
    for index, script in enumerate((first, second, third)):
        script.pieces, script.ending = [f"p{index}"], "early-end"
    with gateway_over(endpoints(scripted), max_resumes=1) as (url, _):
        _, events = stream(url, key, BODY)
        metrics = httpx.get(url + "/metrics").text
    assert len(first.received) == len(second.received) == 1 and third.received == []
    text = "".join(e["choices"][0]["delta"].get("content", "")
                   for e in events[:-1] if e["choices"])
    assert text == "p0p1"
    assert events[-1] == {"code": "The service is currently unavailable",
                          "error": f"engine {second.engine_id} ended its stream before [DONE]; "
                                   "the answer cannot be resumed"}
    assert metric(metrics, "warmroute_gateway_stream_resumes_total", outcome="resumed") == 1
    assert metric(metrics, "warmroute_gateway_stream_resumes_total", outcome="failed") == 1


def test_with_resumes_off_the_first_break_is_an_error_event(scripted: list[Script]) -> None:
    key, (first, second, _) = in_order(scripted)
    first.pieces, first.ending = ["abc"], "reset"
    with gateway_over(endpoints(scripted), max_resumes=0) as (url, _):
        _, events = stream(url, key, {**BODY, "stream_options": None})
    assert second.received == []
    assert events[-1]["code"] == "The service is currently unavailable"
    assert "[DONE]" not in events


def test_a_responses_stream_is_resumed_too(scripted: list[Script]) -> None:
    key, (first, second, _) = in_order(scripted)
    first.pieces, first.ending = ["Hel", "lo"], "reset"
    second.pieces = [" there"]
    with gateway_over(endpoints(scripted)) as (url, _):
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        events = list(sdk.responses.create(
            model="m", input="hi", max_output_tokens=50, stream=True,
            extra_body={"prompt_cache_key": key},
        ))
    assert second.received[0]["messages"][-1] == {"role": "assistant", "content": "Hello"}
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "Hello there"
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "Hello there"
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == 5 + 7
    assert completed.response.usage.input_tokens_details.cached_tokens == 16


def test_a_grpc_stream_is_resumed_too(scripted: list[Script]) -> None:
    from xai_sdk import Client
    from xai_sdk.chat import user

    key, (first, second, _) = in_order(scripted)
    first.pieces, first.ending = ["Hel", "lo"], "error-event"
    second.pieces = [" there"]
    port = free_port()
    with gateway_over(endpoints(scripted), grpc_port=port):
        sdk = Client(api_key="unused", api_host=f"127.0.0.1:{port}", use_insecure_channel=True,
                     metadata=(("x-grok-conv-id", key),), timeout=30)
        chat = sdk.chat.create(model="m", max_tokens=50)
        chat.append(user("hi"))
        pieces = [chunk.content for _, chunk in chat.stream()]
    assert "".join(pieces) == "Hello there"
    assert second.received[0]["continue_token_ids"] == [ord(c) for c in "Hello"]
