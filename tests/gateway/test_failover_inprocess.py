"""Failover before the first byte, in-process over scripted engines: a connect error, a timeout,
an engine gone mid-call or a 5xx moves the request to the key's next engine at once and ejects
the failed one, which only a probe begun after the ejection re-admits; a 4xx is the engine's
answer and passes through; a JSON answer broken mid-body is re-run whole on the next engine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.gateway.harness import metric
from tests.gateway.inprocess import in_process_gateway
from tests.gateway.scripted import Failure, ScriptedFleet, sse_payloads
from warmroute.gateway.membership import Membership
from warmroute.gateway.metrics import GatewayMetrics
from warmroute.gateway.policies import Decision, preference
from warmroute.gateway.proxy import Proxy

KEY = "failing-over"
BODY: dict[str, Any] = {"model": "scripted-model", "max_tokens": 50,
                        "messages": [{"role": "user", "content": "hi"}]}
UNAVAILABLE = "The service is currently unavailable"


def fleet() -> tuple[ScriptedFleet, tuple[str, ...]]:
    engines = ScriptedFleet("e1", "e2", "e3")
    return engines, preference(KEY, engines.ids)


@pytest.mark.parametrize("failure", ["connect", "timeout", "disconnect"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_transport_failure_fails_over_and_ejects_until_a_later_probe(
    tmp_path: Path, failure: Failure, stream: bool
) -> None:
    engines, (first, second, third) = fleet()
    engines[first].failure = failure
    body = {**BODY, "stream": True} if stream else BODY
    async with in_process_gateway(engines, tmp_path) as gw:
        moved = await gw.chat(body, KEY)
        assert first not in gw.gateway.membership.healthy_ids()
        again = await gw.chat(body, KEY)  # an ejected engine is not tried again
        engines[first].failure = None
        await gw.probe()  # begun at the instant of the ejection: it does not re-admit
        assert first not in gw.gateway.membership.healthy_ids()
        gw.clock.advance(1.0)
        await gw.probe()
        back = await gw.chat(body, KEY)
        metrics = await gw.metrics()
        assert gw.in_flight() == {"e1": 0, "e2": 0, "e3": 0}
    statuses = [r.status_code for r in (moved, again, back)]
    assert statuses == [200, 200, 200]
    assert [r.headers["x-warmroute-engine"] for r in (moved, again, back)] == [
        second, second, first]
    assert [len(engines[e].received) for e in (first, second, third)] == [2, 2, 0]
    if stream:
        assert sse_payloads(moved.content)[-1] == "[DONE]"
    else:
        assert moved.json()["choices"][0]["message"]["content"] == "Hello world"
    assert metric(metrics, "warmroute_gateway_failovers_total", engine=first) == 1
    assert metric(metrics, "warmroute_gateway_ejections_total", engine=first) == 1
    assert metric(metrics, "warmroute_gateway_routing_decisions_total", reason="failover") == 1
    # Placement ranks the healthy engines only: with the first ejected, the second is first.
    assert metric(metrics, "warmroute_gateway_routing_decisions_total", reason="keyed") == 3


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_5xx_fails_over_at_once_and_a_4xx_passes_through(
    tmp_path: Path, stream: bool
) -> None:
    """A 5xx whose engine then fails its probe too (run at once) is the engine's failure."""
    engines, (first, second, third) = fleet()
    engines[first].status = 500
    body = {**BODY, "stream": True} if stream else BODY
    async with in_process_gateway(engines, tmp_path) as gw:
        engines[first].health_status = 503
        ok = await gw.chat(body, KEY)
        engines[first].status, engines[first].error = 400, "messages must not be empty"
        engines[first].health_status = 200
        gw.clock.advance(1.0)
        await gw.probe()
        refused = await gw.chat({**body, "messages": []}, KEY)
        metrics = await gw.metrics()
        healthy = gw.gateway.membership.healthy_ids()
    assert ok.status_code == 200 and ok.headers["x-warmroute-engine"] == second
    assert refused.status_code == 400
    assert refused.json() == {"code": "Client specified an invalid argument",
                              "error": "messages must not be empty"}
    assert refused.headers["x-warmroute-engine"] == first
    assert sorted(healthy) == ["e1", "e2", "e3"]  # a 4xx is an answer, not a failure
    assert [len(engines[e].received) for e in (first, second, third)] == [2, 1, 0]
    assert metric(metrics, "warmroute_gateway_failovers_total", engine=first) == 1
    assert metric(metrics, "warmroute_gateway_answers_total", engine=first, status="400") == 1
    assert metric(metrics, "warmroute_gateway_answers_total", engine=second, status="200") == 1


async def test_with_no_engine_left_the_answer_is_503(tmp_path: Path) -> None:
    engines, pref = fleet()
    for engine_id in engines.ids:
        engines[engine_id].failure = "connect"
    async with in_process_gateway(engines, tmp_path) as gw:
        tried = await gw.chat(BODY, KEY)
        none_left = await gw.chat(BODY, KEY)
        assert gw.gateway.membership.healthy_ids() == []
    assert (tried.status_code, none_left.status_code) == (503, 503)
    assert tried.json() == {"code": UNAVAILABLE, "error": "no engine could answer: " + "; ".join(
        f"{e}: ConnectError" for e in pref)}
    assert none_left.json() == {"code": UNAVAILABLE, "error": "no healthy engine is available"}
    assert [len(engines[e].received) for e in engines.ids] == [1, 1, 1]


@pytest.mark.parametrize("how", ["body broken mid-way", "engine gone while computing"])
async def test_a_json_answer_whose_engine_breaks_is_rerun_on_the_next(
    tmp_path: Path, how: str
) -> None:
    engines, (first, second, _) = fleet()
    engines[first].pieces = ["An answer", " that never arrives"]
    engines[second].pieces = ["The whole", " answer"]
    computing = asyncio.Event()
    if how == "body broken mid-way":
        engines[first].ending = "reset"
    else:
        engines[first].failure, engines[first].hold = "disconnect", computing
    async with in_process_gateway(engines, tmp_path) as gw:
        asking = asyncio.create_task(gw.chat(BODY, KEY))
        while not engines[first].received:
            await asyncio.sleep(0.001)
        computing.set()
        answer = await asking
        assert gw.in_flight() == {"e1": 0, "e2": 0, "e3": 0}
        assert first not in gw.gateway.membership.healthy_ids()
    assert answer.status_code == 200
    assert answer.headers["x-warmroute-engine"] == second
    assert answer.json()["choices"][0]["message"]["content"] == "The whole answer"
    assert answer.json()["usage"]["completion_tokens"] == len("The whole answer") + 1
    assert engines[second].received == engines[first].received  # the same request, re-run


async def test_a_request_that_fails_over_reserves_its_prefill_where_it_went() -> None:
    """The engine it leaves releases the request's prefill; the one it moves to is told of it
    (shared routing state reserves it there for the other replicas), and only that one."""
    engines = ScriptedFleet("e1", "e2", "e3")
    engines["e1"].failure = "connect"
    membership = Membership(engines.endpoints())
    for engine_id in engines.ids:
        membership.probe_succeeded(engine_id, membership.clock(), None)
    moves: list[tuple[str, float]] = []
    firsts: list[tuple[str, float]] = []
    membership.move_listeners.append(lambda *move: moves.append(move))
    membership.prefill_listeners.append(lambda *first: firsts.append(first))
    async with httpx.AsyncClient(transport=engines.transport()) as client:
        proxy = Proxy(client, membership, GatewayMetrics(membership))
        answer = await proxy.complete(Decision(("e1", "e2", "e3"), "prefix", 5.0),
                                      orjson.dumps(BODY))
    assert (answer.engine_id, answer.status) == ("e2", 200)
    assert moves == [("e2", 5.0)]
    assert firsts == [("e1", 5.0), ("e2", 5.0)]  # e1's failed attempt, then e2's answer
    assert {e: membership.engines[e].queued for e in engines.ids} == dict.fromkeys(
        engines.ids, 0.0)
