"""The proxy path through the real gateway app, in-process over scripted engines: a JSON answer
and a stream are the engine's own, priced, with the tenant's salt forwarded; a client that
leaves (mid-stream, or before a JSON answer) frees its engine slot and closes the upstream
call; one hot key under concurrency stays within the bounded-load cap and spills to its own
second choice (must show 4, 7)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.gateway.harness import metric, record_loads
from tests.gateway.inprocess import InProcess, in_process_gateway, salt, until
from tests.gateway.scripted import ScriptedFleet, sse_payloads, streamed_text
from warmroute.gateway.engine_stream import DRAIN_S
from warmroute.gateway.policies import load_cap, preference
from warmroute.pricing import ModelPrice

PRICE = ModelPrice(prompt_text_token_price=30_000, cached_prompt_token_price=7_500,
                   completion_text_token_price=150_000)
PRICES = {"scripted-model": PRICE}
KEY = "proxied-conversation"
BODY: dict[str, Any] = {"model": "scripted-model", "max_tokens": 50,
                        "messages": [{"role": "user", "content": "hi"}]}
# "Hello world": 11 ids, one end-of-sequence token; 20 prompt tokens of which 16 cached.
COST = 4 * 30_000 + 16 * 7_500 + 12 * 150_000


def fleet() -> ScriptedFleet:
    return ScriptedFleet("e1", "e2", "e3")


async def test_a_json_answer_is_the_engines_priced_with_the_tenants_salt(tmp_path: Path) -> None:
    engines = fleet()
    first = preference(KEY, engines.ids)[0]
    async with in_process_gateway(engines, tmp_path, prices=PRICES) as gw:
        answer = await gw.chat({**BODY, "cache_salt": "the-clients-own"}, KEY)
        metrics = await gw.metrics()
        assert gw.in_flight() == {"e1": 0, "e2": 0, "e3": 0}
    assert answer.status_code == 200
    assert answer.headers["x-warmroute-engine"] == first
    expected = engines[first].completion(BODY)
    expected["usage"]["cost_in_usd_ticks"] = COST
    assert answer.json() == expected
    assert engines[first].received == [{**BODY, "cache_salt": salt()}]
    assert [len(engines[e].received) for e in engines.ids if e != first] == [0, 0]
    assert metric(metrics, "warmroute_gateway_routing_decisions_total", reason="keyed") == 1
    assert metric(metrics, "warmroute_gateway_answers_total", engine=first, status="200") == 1
    assert metric(metrics, "warmroute_gateway_cached_tokens_total", engine=first) == 16


async def test_the_stream_is_the_engines_stream_and_openai_parses_it(tmp_path: Path) -> None:
    engines = fleet()
    first = preference(KEY, engines.ids)[0]
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    async with in_process_gateway(engines, tmp_path, prices=PRICES) as gw:
        via_gateway = await gw.chat(body, KEY)
        sdk = gw.openai()
        chunks = [c async for c in await sdk.chat.completions.create(
            model="scripted-model", messages=BODY["messages"], max_tokens=50, stream=True,
            stream_options={"include_usage": True}, extra_headers={"x-grok-conv-id": KEY},
        )]
    assert via_gateway.status_code == 200
    assert via_gateway.headers["content-type"].startswith("text/event-stream")
    assert via_gateway.headers["x-warmroute-engine"] == first
    # Upstream the gateway asks for what a resume needs; the client gets its own options only.
    assert engines[first].received[0] == {
        **body, "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "return_token_ids": True, "cache_salt": salt(),
    }
    own = b"".join([e async for e in engines[first].events({**body, "cache_salt": salt()}, 1)])
    expected = sse_payloads(own)
    expected[-2]["usage"]["cost_in_usd_ticks"] = COST
    assert sse_payloads(via_gateway.content) == expected
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.prompt_tokens_details is not None
    assert (usage.prompt_tokens, usage.completion_tokens,
            usage.prompt_tokens_details.cached_tokens) == (20, 12, 16)


async def test_a_client_leaving_mid_stream_frees_the_engine_slot(tmp_path: Path) -> None:
    engines = fleet()
    first = preference(KEY, engines.ids)[0]
    engines[first].pieces = ["one", " two", " three"]
    engines[first].hold, engines[first].hold_after = asyncio.Event(), 1  # never let go
    body = {**BODY, "stream": True}
    async with in_process_gateway(engines, tmp_path) as gw:
        async with gw.call(body, KEY) as call:
            await call.started()
            assert (call.status, call.headers["x-warmroute-engine"]) == (200, first)
            received = sse_payloads((await call.part() or b"") + (await call.part() or b""))
            assert streamed_text(received) == "one"
            assert gw.in_flight()[first] == 1
        # leaving the block is the client going away mid-stream
        assert gw.in_flight() == {"e1": 0, "e2": 0, "e3": 0}
        assert engines[first].aborted == 1


async def test_a_client_leaving_before_a_json_answer_frees_the_engine_slot(
    tmp_path: Path,
) -> None:
    engines = fleet()
    first = preference(KEY, engines.ids)[0]
    engines[first].hold = asyncio.Event()  # computing, never done
    async with in_process_gateway(engines, tmp_path) as gw:
        async with gw.call(BODY, KEY):
            await until(lambda: gw.in_flight()[first] == 1, "the request on its engine")
        await until(lambda: gw.in_flight()[first] == 0, "the slot released")
        assert engines[first].aborted == 1
        assert [len(engines[e].received) for e in engines.ids] == [
            1 if e == first else 0 for e in engines.ids]
        assert gw.ledger() == []


async def held_rounds(gw: InProcess, rounds: int, clients: int) -> list[str]:
    """`rounds` times, `clients` requests of KEY at once, every answer held until all are in
    flight (so placement sees them all): the engine of each answer."""
    served: list[str] = []
    for _ in range(rounds):
        release = asyncio.Event()
        for script in gw.fleet.scripts.values():
            script.hold = release
        answers = [asyncio.create_task(gw.chat(BODY, KEY)) for _ in range(clients)]
        await until(lambda: sum(gw.in_flight().values()) == clients, "every request in flight")
        release.set()
        for response in await asyncio.gather(*answers):
            assert response.status_code == 200, response.text
            served.append(response.headers["x-warmroute-engine"])
    return served


async def test_a_hot_key_is_bounded_and_spills_to_its_own_second_choice(tmp_path: Path) -> None:
    """Six clients at once, five times. ⌈1.25·(n+1)/3⌉ lets the first choice take the 1st,
    3rd and 5th request of each round; the 2nd, 4th and 6th spill to the second choice."""
    p0, p1, p2 = preference(KEY, fleet().ids)
    async with in_process_gateway(fleet(), tmp_path) as gw:
        loads_seen = record_loads(gw.gateway.membership)
        served = await held_rounds(gw, rounds=5, clients=6)
        metrics = await gw.metrics()
    one_round = [(1, 0), (1, 1), (2, 1), (2, 2), (3, 2), (3, 3)]
    assert [(loads[p0], loads[p1]) for loads in loads_seen] == one_round * 5
    assert {loads[p2] for loads in loads_seen} == {0}
    assert Counter(served) == {p0: 15, p1: 15}
    assert metric(metrics, "warmroute_gateway_routing_decisions_total", reason="keyed") == 15
    assert metric(metrics, "warmroute_gateway_routing_decisions_total", reason="spilled") == 15


async def test_a_hot_conversation_keeps_its_cache_aware_home_within_the_cap(
    tmp_path: Path,
) -> None:
    """The same under the default `cache-aware` policy: the conversation's home takes the
    1st, 3rd and 5th of each round (the first ever places it), the rest spill elsewhere."""
    async with in_process_gateway(fleet(), tmp_path, policy="cache-aware") as gw:
        loads_seen = record_loads(gw.gateway.membership)
        served = await held_rounds(gw, rounds=5, clients=6)
        home = gw.gateway.placer.home_of(KEY, tenant=None)
        metrics = await gw.metrics()
    assert home is not None
    assert [loads[home] for loads in loads_seen] == [1, 1, 2, 2, 3, 3] * 5
    for loads in loads_seen:
        assert max(loads.values()) <= load_cap(sum(loads.values()) - 1, 3, 0.25) + 1, loads
    assert served.count(home) == 15
    decisions = {reason: metric(metrics, "warmroute_gateway_routing_decisions_total",
                                reason=reason) for reason in ("sticky", "spilled")}
    assert decisions == {"sticky": 14, "spilled": 15}


async def test_the_openai_client_reads_a_json_answer(tmp_path: Path) -> None:
    engines = fleet()
    async with in_process_gateway(engines, tmp_path) as gw:
        sdk = gw.openai()
        raw = await sdk.chat.completions.with_raw_response.create(
            model="scripted-model", messages=BODY["messages"], max_tokens=50,
            extra_headers={"x-grok-conv-id": KEY},
        )
    answer = raw.parse()
    assert raw.headers["x-warmroute-engine"] == preference(KEY, engines.ids)[0]
    assert answer.choices[0].message.content == "Hello world"
    assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 16


def test_the_scripted_engines_are_unreachable_by_sockets() -> None:
    """The fleet's URLs are only labels: nothing answers them outside the mock transport."""
    with httpx.Client(timeout=2) as client:
        for endpoint in fleet().endpoints():
            try:
                client.get(endpoint.url + "/health")
            except httpx.ConnectError:
                continue
            raise AssertionError(f"{endpoint.url} answered over a socket")


async def test_a_whole_stream_is_read_to_its_end_not_aborted(tmp_path: Path) -> None:
    engines = fleet()
    first = preference(KEY, engines.ids)[0]
    engines[first].pieces = ["one", " two"]
    async with in_process_gateway(engines, tmp_path) as gw:
        async with gw.call({**BODY, "stream": True}, KEY) as call:
            await call.started()
            received = b""
            while (part := await call.part()) is not None:
                received += part
        assert streamed_text(sse_payloads(received)) == "one two"
        await until(lambda: gw.in_flight()[first] == 0, "the slot released")
        assert engines[first].aborted == 0  # its body was read to the end: not closed early


async def test_a_responses_stream_reads_its_engine_body_to_the_end(tmp_path: Path) -> None:
    """The neutral surfaces stop at the usage chunk; `[DONE]` and the body's end are still
    read, so the engine's connection is not closed under its answer."""
    engines = fleet()
    first = preference(KEY, engines.ids)[0]
    engines[first].pieces = ["one", " two"]
    async with in_process_gateway(engines, tmp_path) as gw:
        answer = await gw.http.post("/v1/responses", headers={"x-grok-conv-id": KEY}, json={
            "model": "scripted-model", "input": "hello", "stream": True})
        assert answer.status_code == 200
        assert '"delta":"one"' in answer.text.replace(" ", "")
        await until(lambda: gw.in_flight()[first] == 0, "the slot released")
        assert engines[first].aborted == 0


async def test_an_engine_that_stalls_after_its_usage_chunk_is_closed_soon(tmp_path: Path) -> None:
    """Reading a body to its end after the answer is bounded: an engine that never sends
    `[DONE]` has its connection closed within `DRAIN_S`, its slot freed."""
    engines = fleet()
    first = preference(KEY, engines.ids)[0]
    engines[first].pieces, engines[first].ending = ["one"], "stall-after-usage"
    async with in_process_gateway(engines, tmp_path) as gw:
        started = asyncio.get_running_loop().time()
        answer = await gw.http.post("/v1/responses", headers={"x-grok-conv-id": KEY}, json={
            "model": "scripted-model", "input": "hello", "stream": True})
        assert answer.status_code == 200 and "response.completed" in answer.text
        await until(lambda: gw.in_flight()[first] == 0, "the slot released")
        assert asyncio.get_running_loop().time() - started < DRAIN_S + 2.0
        assert engines[first].aborted == 1
