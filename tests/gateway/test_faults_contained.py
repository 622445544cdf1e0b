"""Faults stay contained through the gateway (issue 13, must show 1 and 2), over real engines.

With 4 greedy streams running over 2 engines, every extreme request on every surface (Chat
Completions, Responses, gRPC; with a routing key and without) is a 4xx (gRPC INVALID_ARGUMENT,
or NOT_FOUND for an id no response can have) within a few seconds; the streams equal their
undisturbed text with one usage chunk; no engine is ejected. A request whose forward pass raises
inside its engine (the scheduler's test-only fault hook, on engines served in this process)
fails alone with its error, tried on one engine only, while the other sequences complete and
both engines stay admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from xai_sdk.proto import chat_pb2_grpc

from tests.api.test_engine_faults_http import POISON, Served, poison_decode, serve
from tests.gateway.extreme import chat_cases, grpc_cases, grpc_request, responses_cases
from tests.gateway.harness import MODEL, Fleet, gateway_over, metric
from tests.procs import free_port
from warmroute.config import EngineConfig, EngineEndpoint

pytestmark = pytest.mark.slow
CHAT = "/v1/chat/completions"
STREAMS = [f"Greedy stream {i} tells about prefix caches and routers." for i in range(4)]
FAST_S = 5.0
REQUEST_FAILED = "The request could not be processed"
INJECTED = "the engine failed in this request's decode: RuntimeError: injected fault"
JSON = {"content-type": "application/json"}


def stream_body(text: str, max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}


async def stream(client: httpx.AsyncClient, text: str, key: str, max_tokens: int = 256,
                 started: asyncio.Event | None = None) -> tuple[str, list[Any]]:
    """A greedy stream's text and its events (`[DONE]` as the string)."""
    events: list[Any] = []
    async with client.stream("POST", CHAT, json=stream_body(text, max_tokens),
                             headers={"x-grok-conv-id": key}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append("[DONE]" if line == "data: [DONE]" else json.loads(line[6:]))
                if started is not None and len(events) > 2:
                    started.set()
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if isinstance(e, dict) and e.get("choices"))
    return text, events


async def timed_post(client: httpx.AsyncClient, path: str, body: bytes,
                     headers: dict[str, str]) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = await client.post(path, content=body, headers={**JSON, **headers})
    return response.status_code, response.json(), time.monotonic() - started


async def timed_grpc(stub: Any, request: Any, key: str | None) -> tuple[Any, float]:
    metadata = (("x-grok-conv-id", key),) if key else ()
    started = time.monotonic()
    try:
        await stub.GetCompletion(request, metadata=metadata, timeout=30)
        code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
    return code, time.monotonic() - started


async def barrage(url: str, grpc_port: int) -> tuple[list[Any], list[Any], list[Any]]:
    """Every extreme case on every surface, keyed and keyless, all at once."""
    keys: tuple[str | None, ...] = (None, "extreme-conversation")
    async with httpx.AsyncClient(base_url=url, timeout=60) as client, grpc.aio.insecure_channel(
        f"127.0.0.1:{grpc_port}", options=[("grpc.max_send_message_length", 2**25)]
    ) as channel:
        stub = chat_pb2_grpc.ChatStub(channel)

        def routed(case_headers: dict[str, str], key: str | None) -> dict[str, str]:
            return {**({"x-grok-conv-id": key} if key else {}), **case_headers}

        chat = [timed_post(client, CHAT, c.body, routed(c.headers, k))
                for c in chat_cases() for k in keys]
        responses = [timed_post(client, "/v1/responses", c.body, routed(c.headers, k))
                     for c in responses_cases() for k in keys]
        calls = [timed_grpc(stub, c.request, k) for c in grpc_cases() for k in keys]
        answered = await asyncio.gather(*chat, *responses, *calls)
    n_chat, n_resp = len(chat), len(responses)
    return (list(answered[:n_chat]), list(answered[n_chat:n_chat + n_resp]),
            list(answered[n_chat + n_resp:]))


def check_http(cases: list[Any], answers: list[Any]) -> None:
    expected = [c for c in cases for _ in range(2)]
    for case, (status, envelope, elapsed) in zip(expected, answers, strict=True):
        assert status == case.status, (case.name, status, envelope)
        assert set(envelope) == {"code", "error"}, (case.name, envelope)
        assert elapsed < FAST_S, (case.name, elapsed)


async def test_extreme_requests_are_fast_4xx_on_every_surface_while_streams_go_on(
    fleet: Fleet, tmp_path: Path
) -> None:
    two, grpc_port = fleet.endpoints()[:2], free_port()
    with gateway_over(two, data_dir=tmp_path, grpc_port=grpc_port) as (url, gateway):
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            alone = [await stream(client, s, f"stream-{i}") for i, s in enumerate(STREAMS)]
            started = asyncio.Event()
            running = [asyncio.ensure_future(stream(client, s, f"stream-{i}", started=started))
                       for i, s in enumerate(STREAMS)]
            await asyncio.wait_for(started.wait(), 60)
            running_then = sum(not r.done() for r in running)
            chat, responses, calls = await barrage(url, grpc_port)
            results = await asyncio.gather(*running)
            metrics = (await client.get("/metrics")).text
        healthy = sorted(gateway.membership.healthy_ids())
    check_http(chat_cases(), chat)
    check_http(responses_cases(), responses)
    expected = [c for c in grpc_cases() for _ in range(2)]
    for case, (code, elapsed) in zip(expected, calls, strict=True):
        assert code == case.code, (case.name, code)
        assert elapsed < FAST_S, (case.name, elapsed)
    assert running_then == 4  # the barrage began with every stream running
    for (text, events), (expected_text, _) in zip(results, alone, strict=True):
        assert text == expected_text and events[-1] == "[DONE]"
        assert sum(isinstance(e, dict) and "usage" in e for e in events) == 1
    assert healthy == sorted(e.engine_id for e in two)
    for endpoint in two:
        assert metric(metrics, "warmroute_gateway_ejections_total", engine=endpoint.engine_id) == 0


@contextlib.contextmanager
def two_served(config: EngineConfig) -> Iterator[list[Served]]:
    with serve(config) as one, serve(config) as other:
        yield [one, other]


async def poisoned(url: str, grpc_port: int) -> tuple[Any, Any, Any, Any]:
    """One poisoned request on each surface: Chat JSON, Chat stream, Responses, gRPC."""
    text = f"{POISON} answer at length"
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}],
            "temperature": 0, "max_tokens": 24}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client, grpc.aio.insecure_channel(
        f"127.0.0.1:{grpc_port}"
    ) as channel:
        return await asyncio.gather(
            client.post(CHAT, json=body),
            stream(client, f"{POISON} stream", "poisoned-stream", max_tokens=24),
            client.post("/v1/responses", json={"model": MODEL, "input": text,
                                               "max_output_tokens": 24, "temperature": 0}),
            timed_grpc(chat_pb2_grpc.ChatStub(channel),
                       grpc_request(text=text, max_tokens=24, temperature=0.0), None),
        )


async def test_a_request_whose_forward_pass_raises_fails_alone_on_one_engine(
    tiny_config: EngineConfig, tmp_path: Path
) -> None:
    with two_served(replace(tiny_config, max_running=8)) as served:
        endpoints = tuple(EngineEndpoint.of(s.url, f"hooked-{i}") for i, s in enumerate(served))
        grpc_port = free_port()
        with gateway_over(endpoints, data_dir=tmp_path, grpc_port=grpc_port) as (url, gateway):
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                alone = [await stream(client, s, f"bystander-{i}") for i, s in
                         enumerate(STREAMS[:3])]
                for one in served:
                    one.engine.scheduler.fault = poison_decode(one.engine)
                try:
                    bystanders, faults = await asyncio.gather(
                        asyncio.gather(*(stream(client, s, f"bystander-{i}")
                                         for i, s in enumerate(STREAMS[:3]))),
                        poisoned(url, grpc_port))
                finally:
                    for one in served:
                        one.engine.scheduler.fault = None
                metrics = (await client.get("/metrics")).text
            healthy = sorted(gateway.membership.healthy_ids())
        failed = [s.engine.stats()["requests_failed"] for s in served]
    plain, (_, stream_events), responses, (grpc_code, _) = faults
    assert [text for text, _ in bystanders] == [text for text, _ in alone]
    assert all(events[-1] == "[DONE]" for _, events in bystanders)
    assert (plain.status_code, plain.json()) == (422, {"code": REQUEST_FAILED,
                                                       "error": INJECTED})
    assert stream_events[-1] == {"code": REQUEST_FAILED, "error": INJECTED}
    assert "[DONE]" not in stream_events
    assert (responses.status_code, responses.json()) == (422, {"code": REQUEST_FAILED,
                                                               "error": INJECTED})
    assert grpc_code == grpc.StatusCode.INVALID_ARGUMENT  # a 422: the request's, not ours
    assert sum(failed) == 4  # each poisoned request tried on one engine only
    assert healthy == ["hooked-0", "hooked-1"]
    for engine_id in healthy:
        assert metric(metrics, "warmroute_gateway_ejections_total", engine=engine_id) == 0
        assert metric(metrics, "warmroute_gateway_failovers_total", engine=engine_id) == 0
