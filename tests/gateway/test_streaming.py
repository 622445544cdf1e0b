"""Must show 7: a stream through the gateway is the engine's stream, byte for byte but for ids
and timestamps, and the real `openai` client reads it; a client that leaves frees the slot."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.harness import Fleet, chat_body, gateway_over, opening, wait_for
from warmroute.gateway.policies import preference

pytestmark = pytest.mark.slow
KEY = "streaming-conversation"
LONG = 3000  # tokens: far more than a test waits for


def sse_events(raw: bytes) -> list[Any]:
    """Each `data:` payload, with the fields that differ between two runs blanked out."""
    events: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        if payload == "[DONE]":
            events.append(payload)
            continue
        event = json.loads(payload)
        event["id"], event["created"] = "<id>", 0
        if event.get("usage"):
            event["usage"]["prompt_tokens_details"]["cached_tokens"] = "<cached>"
            # The gateway prices the answer; the engine does not. Compared apart.
            event["usage"]["cost_in_usd_ticks"] = event["usage"].get("cost_in_usd_ticks", 0) > 0
        events.append(event)
    return events


def stream_body(max_tokens: int) -> dict[str, Any]:
    return chat_body(opening("Stream me an answer, please."), max_tokens=max_tokens,
                     stream=True, stream_options={"include_usage": True})


def test_the_gateway_stream_is_the_engines_stream_and_openai_parses_it(fleet: Fleet) -> None:
    body = stream_body(max_tokens=8)
    with gateway_over(fleet.endpoints()) as (url, gateway), httpx.Client(timeout=60) as client:
        with client.stream("POST", url + "/v1/chat/completions", json=body,
                           headers={"x-grok-conv-id": KEY}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            engine = response.headers["x-warmroute-engine"]
            via_gateway = response.read()
        assert engine == preference(KEY, fleet.ids)[0]
        direct = client.post(fleet.url(engine) + "/v1/chat/completions",
                             json={**body, "cache_salt": gateway.config.cache_salt})
        gateway_events, engine_events = sse_events(via_gateway), sse_events(direct.content)
        assert gateway_events[-2]["usage"]["cost_in_usd_ticks"] is True
        engine_events[-2]["usage"]["cost_in_usd_ticks"] = True
        assert gateway_events == engine_events
        assert sse_events(via_gateway)[-1] == "[DONE]"

        sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        chunks = list(sdk.chat.completions.create(
            model=body["model"], messages=body["messages"], max_tokens=8, temperature=0.0,
            stream=True, stream_options={"include_usage": True},
            extra_headers={"x-grok-conv-id": KEY},
        ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected = "".join(
        e["choices"][0]["delta"].get("content", "")
        for e in sse_events(direct.content) if e != "[DONE]" and e["choices"]
    )
    assert text == expected and text
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.prompt_tokens_details is not None
    assert (usage.prompt_tokens_details.cached_tokens or 0) > 0  # third time on a warm engine


def test_a_client_leaving_mid_stream_frees_the_engine_slot(fleet: Fleet) -> None:
    engine = preference(KEY, fleet.ids)[0]
    generated_before = fleet.cache_stats(engine)["generated_tokens"]
    with gateway_over(fleet.endpoints()) as (url, gateway), httpx.Client(timeout=60) as client:
        with client.stream("POST", url + "/v1/chat/completions", json=stream_body(LONG),
                           headers={"x-grok-conv-id": KEY}) as response:
            assert response.headers["x-warmroute-engine"] == engine
            events = (line for line in response.iter_lines() if line)
            for _ in range(3):
                assert next(events).startswith("data: ")
            assert fleet.cache_stats(engine)["running"] == 1
        # leaving the `with` closes the connection mid-stream
        wait_for(lambda: fleet.cache_stats(engine)["running"] == 0, 10, "the engine slot")
        wait_for(lambda: gateway.membership.engines[engine].in_flight == 0, 5, "gateway release")
    assert fleet.cache_stats(engine)["generated_tokens"] - generated_before < LONG // 2


def test_a_client_leaving_a_non_streaming_request_frees_the_engine_slot(fleet: Fleet) -> None:
    engine = preference(KEY, fleet.ids)[0]
    generated_before = fleet.cache_stats(engine)["generated_tokens"]
    body = chat_body(opening("A long answer, please."), max_tokens=LONG)
    with gateway_over(fleet.endpoints()) as (url, gateway):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=body, headers={"x-grok-conv-id": KEY},
                       timeout=httpx.Timeout(60, read=1.0))
        wait_for(lambda: fleet.cache_stats(engine)["running"] == 0, 10, "the engine slot")
        wait_for(lambda: gateway.membership.engines[engine].in_flight == 0, 5, "gateway release")
    assert fleet.cache_stats(engine)["generated_tokens"] - generated_before < LONG // 2
