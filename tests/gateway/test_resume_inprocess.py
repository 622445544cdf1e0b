"""Resuming a stream whose engine breaks mid-answer, in-process over scripted engines (issue 8):
what the continuing engine is asked, the exact text and the one usage chunk the client gets,
the bound on resumes, twenty streams broken at once, the error event when no engine can go on,
and the same resume under the Responses API and gRPC. Scripted engines answer a continuation
of their own text with the rest of it, as a deterministic model would."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from xai_sdk import AsyncClient
from xai_sdk.chat import user

from tests.gateway.harness import metric
from tests.gateway.inprocess import in_process_gateway, salt
from tests.gateway.scripted import Ending, ScriptedFleet, sse_payloads, streamed_text, user_text
from tests.procs import free_port
from warmroute.api.chat_completions import usage_json
from warmroute.gateway.policies import preference
from warmroute.types import Usage

KEY = "resumed-conversation"
UNAVAILABLE = "The service is currently unavailable"
BODY: dict[str, Any] = {
    "model": "scripted-model", "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 50, "stream": True, "stream_options": {"include_usage": True},
}


def fleet(*ids: str) -> tuple[ScriptedFleet, list[str]]:
    engines = ScriptedFleet(*(ids or ("s1", "s2", "s3")))
    return engines, list(preference(KEY, engines.ids))


@pytest.mark.parametrize("ending", ["early-end", "error-event", "reset"])
async def test_a_broken_stream_goes_on_on_the_next_engine(tmp_path: Path, ending: Ending) -> None:
    engines, (first, second, third) = fleet()
    engines[first].pieces, engines[first].ending = ["Hel", "lo"], ending
    engines[second].pieces = ["Hel", "lo", " wor", "ld"]
    async with in_process_gateway(engines, tmp_path) as gw:
        engines[first].health_status = 500  # an error event ejects once the probe fails too
        response = await gw.chat(BODY, KEY)
        metrics = await gw.metrics()
        assert first not in gw.gateway.membership.healthy_ids()
        assert gw.in_flight() == {"s1": 0, "s2": 0, "s3": 0}
    assert response.headers["x-warmroute-engine"] == first
    # The continuing engine was asked to continue, from the ids, with what budget was left.
    assert engines[second].received == [{
        **BODY,
        "messages": [*BODY["messages"], {"role": "assistant", "content": "Hello"}],
        "max_tokens": 45, "continue_final_message": True, "add_generation_prompt": False,
        "continue_token_ids": [ord(c) for c in "Hello"], "return_token_ids": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "cache_salt": salt(),
    }]
    assert engines[third].received == []
    events = sse_payloads(response.content)
    chunks = events[:-1]
    assert events[-1] == "[DONE]"
    assert {c["id"] for c in chunks} == {"chatcmpl-" + first}
    assert {c["created"] for c in chunks} == {1}
    assert streamed_text(events) == "Hello world"
    assert [c["choices"][0]["delta"] for c in chunks if c["choices"]] == [
        {"role": "assistant"}, {"content": "Hel"}, {"content": "lo"}, {"content": " wor"},
        {"content": "ld"}, {}]
    assert [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]][-1] == "stop"
    assert all("usage" not in c and "token_ids" not in c["choices"][0]
               for c in chunks if c["choices"])
    # 5 delivered tokens, then 6 and an end-of-sequence token from the continuing engine;
    # prompt and cached tokens are the first attempt's. Priced at the default price.
    usage = chunks[-1]["usage"]
    assert usage.pop("cost_in_usd_ticks") > 0
    assert usage == usage_json(Usage(20, 5 + 7, 16))
    assert metric(metrics, "warmroute_gateway_stream_resumes_total", outcome="resumed") == 1


async def test_resumes_are_bounded_and_end_in_an_error_event(tmp_path: Path) -> None:
    engines, order = fleet()
    for index, engine_id in enumerate(order):
        engines[engine_id].pieces, engines[engine_id].ending = [f"p{index}"], "early-end"
    async with in_process_gateway(engines, tmp_path, max_resumes=1) as gw:
        events = sse_payloads((await gw.chat(BODY, KEY)).content)
        metrics = await gw.metrics()
    assert [len(engines[e].received) for e in order] == [1, 1, 0]
    assert streamed_text(events) == "p0p1"
    assert events[-1] == {"code": UNAVAILABLE,
                          "error": f"engine {order[1]} ended its stream before [DONE]; "
                                   "the answer cannot be resumed"}
    assert metric(metrics, "warmroute_gateway_stream_resumes_total", outcome="resumed") == 1
    assert metric(metrics, "warmroute_gateway_stream_resumes_total", outcome="failed") == 1


async def test_with_resumes_off_the_first_break_is_an_error_event(tmp_path: Path) -> None:
    engines, (first, second, _) = fleet()
    engines[first].pieces, engines[first].ending = ["abc"], "reset"
    async with in_process_gateway(engines, tmp_path, max_resumes=0) as gw:
        events = sse_payloads((await gw.chat({**BODY, "stream_options": None}, KEY)).content)
    assert engines[second].received == []
    assert streamed_text(events) == "abc"
    assert events[-1] == {"code": UNAVAILABLE, "error": f"engine {first} failed mid-stream; "
                                                        "the answer cannot be resumed"}


async def test_with_every_engine_gone_the_stream_ends_with_an_error_event(
    tmp_path: Path,
) -> None:
    engines, (first, second) = fleet("g1", "g2")
    engines[first].pieces, engines[first].ending = ["A long", " answer"], "reset"
    engines[second].failure = "connect"
    async with in_process_gateway(engines, tmp_path) as gw:
        events = sse_payloads((await gw.chat(BODY, KEY)).content)
        metrics = await gw.metrics()
        assert gw.gateway.membership.healthy_ids() == []
        assert gw.in_flight() == {"g1": 0, "g2": 0}
    assert streamed_text(events) == "A long answer"
    assert "[DONE]" not in events
    assert events[-1] == {"code": UNAVAILABLE, "error": (
        f"engine {first} failed mid-stream; no engine could continue: "
        f"no engine could answer: {second}: ConnectError")}
    assert all("error" not in e for e in events[:-1])
    assert metric(metrics, "warmroute_gateway_stream_resumes_total", outcome="failed") == 1


def words(body: dict[str, Any]) -> list[str]:
    """Each stream's own answer: eight pieces made of its prompt."""
    return [f" {user_text(body)}.{i}" for i in range(8)]


async def test_twenty_concurrent_streams_survive_an_engine_broken_mid_run(
    tmp_path: Path,
) -> None:
    """Every stream is held after three pieces until all twenty are in flight; then the
    victim's streams break at once and each goes on elsewhere with exactly its own text."""
    engines = ScriptedFleet("e1", "e2", "e3")
    victim = "e2"
    release = asyncio.Event()
    for script in engines.scripts.values():
        script.pieces_for, script.hold, script.hold_after = words, release, 3
    engines[victim].pieces_for = lambda body: words(body)[:3]
    engines[victim].ending = "reset"
    keys = [f"resume-many-{i}" for i in range(20)]

    def body(key: str) -> dict[str, Any]:
        return {**BODY, "messages": [{"role": "user", "content": key}]}

    async with in_process_gateway(engines, tmp_path) as gw:
        asked = [asyncio.create_task(gw.chat(body(k), k)) for k in keys]
        while sum(gw.in_flight().values()) < len(keys):
            await asyncio.sleep(0.001)
        on_victim = gw.in_flight()[victim]
        release.set()
        answers = dict(zip(keys, await asyncio.gather(*asked), strict=True))
        metrics = await gw.metrics()
        assert gw.in_flight() == {"e1": 0, "e2": 0, "e3": 0}
    assert on_victim > 0
    resumed = [k for k in keys if answers[k].headers["x-warmroute-engine"] == victim]
    assert len(resumed) == on_victim
    for key in keys:
        events = sse_payloads(answers[key].content)
        assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
        assert streamed_text(events) == "".join(words(body(key))), key
        usages = [e["usage"] for e in events[:-1] if "usage" in e]
        assert len(usages) == 1 and events[-2]["choices"] == []
        assert (usages[0]["prompt_tokens"], usages[0]["completion_tokens"]) == (
            20, len("".join(words(body(key)))) + 1)
        assert sum(1 for e in events[:-1] if e["choices"] and "role" in e["choices"][0]["delta"]
                   ) == 1
    assert metric(metrics, "warmroute_gateway_stream_resumes_total", outcome="resumed") == len(
        resumed)
    assert metric(metrics, "warmroute_gateway_stream_resumes_total", outcome="failed") == 0


async def test_a_responses_stream_is_resumed_too(tmp_path: Path) -> None:
    engines, (first, second, _) = fleet()
    engines[first].pieces, engines[first].ending = ["Hel", "lo"], "reset"
    engines[second].pieces = ["Hel", "lo", " there"]
    async with in_process_gateway(engines, tmp_path) as gw:
        sdk = gw.openai()
        events = [e async for e in await sdk.responses.create(
            model="scripted-model", input="hi", max_output_tokens=50, stream=True,
            extra_body={"prompt_cache_key": KEY},
        )]
    assert engines[second].received[0]["messages"][-1] == {"role": "assistant",
                                                           "content": "Hello"}
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "Hello there"
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "Hello there"
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == 5 + 7
    assert completed.response.usage.input_tokens == 20
    assert completed.response.usage.input_tokens_details.cached_tokens == 16


async def test_a_grpc_stream_is_resumed_too(tmp_path: Path) -> None:
    engines, (first, second, _) = fleet()
    engines[first].pieces, engines[first].ending = ["Hel", "lo"], "error-event"
    engines[second].pieces = ["Hel", "lo", " there"]
    port = free_port()
    async with in_process_gateway(engines, tmp_path, grpc_port=port):
        sdk = AsyncClient(api_key="unused", api_host=f"127.0.0.1:{port}",
                          use_insecure_channel=True, metadata=(("x-grok-conv-id", KEY),),
                          timeout=30)
        chat = sdk.chat.create(model="scripted-model", max_tokens=50)
        chat.append(user("hi"))
        chunks = [chunk async for _, chunk in chat.stream()]
    pieces = [(c.content, c.proto.debug_output.sampler_tag) for c in chunks if c.content]
    assert "".join(text for text, _ in pieces) == "Hello there"
    # each delta names the engine that sampled it: the first one, then the one that resumed
    assert pieces == [("Hel", first), ("lo", first), (" there", second)]
    assert engines[second].received[0]["continue_token_ids"] == [ord(c) for c in "Hello"]
