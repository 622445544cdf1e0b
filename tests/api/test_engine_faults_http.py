"""Faults stay contained, seen over real HTTP (issue 13): the engine's app on a thread of this
process (uvicorn on 127.0.0.1), so a test can reach its scheduler's test-only fault hook.

Extreme but valid JSON is a fast 400 while greedy streams go on undisturbed; a request whose
forward pass raises fails alone (422, or an error event in its stream) and the engine stays
healthy; a full wait queue answers 503 with `retry-after` at once; health probes are answered
while a prompt is being prepared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest

from tests.procs import free_port
from warmroute.api.engine_app import create_engine_app
from warmroute.config import EngineConfig
from warmroute.engine.engine import Engine
from warmroute.engine.sequence import Sequence
from warmroute.procs import BackgroundServer

CHAT = "/v1/chat/completions"
INVALID = "Client specified an invalid argument"
REQUEST_FAILED = "The request could not be processed"
POISON = "POISON"


@dataclass
class Served:
    engine: Engine
    url: str


@pytest.fixture(scope="module")
def served(tiny_config: EngineConfig) -> Iterator[Served]:
    with serve(replace(tiny_config, max_running=8)) as running:
        yield running


@contextlib.contextmanager
def serve(config: EngineConfig) -> Iterator[Served]:
    engine = Engine.from_config(config)
    port = free_port()
    server = BackgroundServer(create_engine_app(engine, "faults-1"), "127.0.0.1", port).start()
    try:
        yield Served(engine, server.url)
    finally:
        engine.scheduler.fault = None
        server.stop()
    engine.pool.check_integrity()


def body(text: str = "Hello, engine.", **fields: Any) -> dict[str, Any]:
    return {"model": "builtin:tiny", "messages": [{"role": "user", "content": text}],
            "max_tokens": 8, "temperature": 0, **fields}


def raw(text: str) -> bytes:
    """A body with `text` spliced in as raw JSON (what json.dumps cannot or will not write)."""
    return ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, ' + text + "}"
            ).encode()


NESTED = "[" * 50_000 + "]" * 50_000
EXTREME: list[tuple[str, bytes]] = [
    ("seed 2**64", raw(f'"seed": {2**64}')),
    ("seed below -2**63", raw(f'"seed": {-(2**63) - 1}')),
    ("four 200 KB stop strings", raw('"stop": ' + json.dumps(["x" * 200_000] * 4))),
    ("five stop strings", raw('"stop": ["a", "b", "c", "d", "e"]')),
    ("lone surrogate escaped", b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}'),
    ("lone surrogate as bytes", b'{"messages": [{"role": "user", "content": "a\xed\xa0\x80"}]}'),
    ("lone surrogate in the salt", raw('"cache_salt": "\\udfff"')),
    ("messages nested 50,000 deep", b'{"messages": ' + NESTED.encode() + b"}"),
    ("5,000-digit max_tokens", b'{"messages": [], "max_tokens": ' + b"9" * 5000 + b"}"),
    ("4,000-digit max_tokens", b'{"messages": [{"role": "user", "content": "hi"}], '
                               b'"max_tokens": ' + b"9" * 4000 + b"}"),
    ("infinite max_tokens", raw('"temperature": 1e999')),
    ("NaN temperature", raw('"temperature": NaN')),
    ("temperature 2.5", raw('"temperature": 2.5')),
    ("top_p 0", raw('"top_p": 0')),
    ("n 10**30", raw(f'"n": {10**30}')),
    ("presence_penalty 3", raw('"presence_penalty": 3')),
    ("huge continue_token_ids", raw('"continue_final_message": true, "add_generation_prompt": '
                                    f'false, "continue_token_ids": [{10**30}]')),
    ("an 8 MB prompt", json.dumps(body("route the cache " * 2**19)).encode()),
]


async def post_raw(client: httpx.AsyncClient, content: bytes) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = await client.post(CHAT, content=content,
                                 headers={"content-type": "application/json"})
    return response.status_code, response.json(), time.monotonic() - started


async def stream_text(client: httpx.AsyncClient, text: str, started: asyncio.Event | None = None,
                      max_tokens: int = 48) -> tuple[str, list[dict[str, Any]], bool]:
    """A greedy stream's text, its parsed events and whether it ended with [DONE]."""
    events: list[dict[str, Any]] = []
    payload = body(text, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
    async with client.stream("POST", CHAT, json=payload) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                return content_of(events), events, True
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if started is not None and len(events) > 1:
                    started.set()
    return content_of(events), events, False


def content_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["choices"][0]["delta"].get("content", "")
                   for e in events if e.get("choices"))


STREAMS = [f"Greedy stream {i} tells about prefix caches." for i in range(4)]


async def test_extreme_requests_are_fast_400s_while_streams_go_on(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
        undisturbed = [(await stream_text(client, s))[0] for s in STREAMS]
        started = asyncio.Event()
        streams = [asyncio.ensure_future(stream_text(client, s, started)) for s in STREAMS]
        await asyncio.wait_for(started.wait(), 30)
        answers = await asyncio.gather(*(post_raw(client, content) for _, content in EXTREME))
        greedy = await client.post(CHAT, json=body(STREAMS[0], max_tokens=48,
                                                   temperature=1e-40, seed=7))
        results = await asyncio.gather(*streams)
        health = await client.get("/health")
        stats = (await client.get("/cache")).json()
    for (case, _), (status, envelope, elapsed) in zip(EXTREME, answers, strict=True):
        assert status == 400, (case, envelope)
        assert envelope["code"] == INVALID and set(envelope) == {"code", "error"}, case
        assert elapsed < 5.0, (case, elapsed)
    assert greedy.status_code == 200  # a tiny temperature samples greedily
    assert greedy.json()["choices"][0]["message"]["content"] == undisturbed[0]
    for (text, events, done), expected in zip(results, undisturbed, strict=True):
        assert done and text == expected
        assert sum("usage" in e for e in events) == 1 and "usage" in events[-1]
    assert health.status_code == 200
    assert (stats["requests_failed"], stats["running"], stats["waiting"]) == (0, 0, 0)


def poison_decode(engine: Engine, after_tokens: int = 3) -> Callable[[str, list[Sequence]], None]:
    def fault(phase: str, seqs: list[Sequence]) -> None:
        for seq in seqs:
            if phase == "decode" and len(seq.output_ids) >= after_tokens and POISON in (
                engine.tokenizer.decode(seq.prompt_ids)
            ):
                raise RuntimeError("injected fault")

    return fault


async def test_a_request_whose_forward_pass_raises_fails_alone(served: Served) -> None:
    failed_before = served.engine.stats()["requests_failed"]
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
        undisturbed = [(await stream_text(client, s))[0] for s in STREAMS[:3]]
        served.engine.scheduler.fault = poison_decode(served.engine)
        try:
            results = await asyncio.gather(
                *(stream_text(client, s) for s in STREAMS[:3]),
                client.post(CHAT, json=body(f"{POISON} answer", max_tokens=24)),
                stream_text(client, f"{POISON} stream", max_tokens=24),
            )
        finally:
            served.engine.scheduler.fault = None
        health = await client.get("/health")
    *bystanders, plain, (_, poisoned_events, poisoned_done) = results
    assert [text for text, _, done in bystanders if done] == undisturbed
    error = "the engine failed in this request's decode: RuntimeError: injected fault"
    assert plain.status_code == 422
    assert plain.json() == {"code": REQUEST_FAILED, "error": error}
    assert not poisoned_done and poisoned_events[-1] == {"code": REQUEST_FAILED, "error": error}
    assert len(poisoned_events) >= 3  # its role chunk and the text of its first tokens
    assert health.status_code == 200
    assert served.engine.stats()["requests_failed"] - failed_before == 2


async def test_a_full_wait_queue_is_a_503_with_retry_after(tiny_config: EngineConfig) -> None:
    inside, release = threading.Event(), threading.Event()
    with serve(replace(tiny_config, max_running=1, max_waiting=1)) as running:
        running.engine.scheduler.fault = hold_first_pass(inside, release)
        async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
            first = asyncio.ensure_future(client.post(CHAT, json=body("first")))
            while not inside.is_set():
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(client.post(CHAT, json=body("second")))
            while running.engine.scheduler.num_waiting < 1:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            refused = await client.post(CHAT, json=body("third"))
            elapsed = time.monotonic() - started
            release.set()
            answered = [(await first).status_code, (await second).status_code]
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json() == {
            "code": "The service is currently unavailable",
            "error": "this engine already has 1 requests waiting; retry shortly",
        }
        assert elapsed < 1.0
        assert answered == [200, 200]


def hold_first_pass(
    inside: threading.Event, release: threading.Event
) -> Callable[[str, list[Sequence]], None]:
    """A fault hook that holds the scheduler in its first forward pass until `release`."""

    def hold(phase: str, seqs: list[Sequence]) -> None:
        if not inside.is_set():
            inside.set()
            release.wait(timeout=30)

    return hold


async def test_health_answers_while_a_prompt_is_prepared(served: Served) -> None:
    tokenizer = served.engine.tokenizer
    render = tokenizer.render

    def slow_render(messages: Any, *args: Any, **kwargs: Any) -> list[int]:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # CPU-bound, holding the GIL in turns
            sum(range(1000))
        return render(messages, *args, **kwargs)

    tokenizer.render = slow_render  # type: ignore[method-assign]
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            slow = asyncio.ensure_future(client.post(CHAT, json=body("slow to prepare")))
            await asyncio.sleep(0.2)
            probes = []
            while not slow.done():
                started = time.monotonic()
                assert (await client.get("/health")).status_code == 200
                probes.append(time.monotonic() - started)
                await asyncio.sleep(0.05)
            assert (await slow).status_code == 200
    finally:
        del tokenizer.render
    assert len(probes) >= 10
    assert max(probes) < 0.5, probes
