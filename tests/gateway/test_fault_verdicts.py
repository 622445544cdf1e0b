"""An engine's failure told apart from a request's (issue 13), in-process over scripted engines:
a 422 or a request-level error event is the client's answer, tried on no other engine and
ejecting none; a busy engine (503 with `retry-after`) passes the request on without being
ejected; a 5xx ejects only when the engine's probe, run at once, fails too, or after several
different requests failed there; the gateway's own bounds answer 503 at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.harness import metric
from tests.gateway.inprocess import in_process_gateway, until
from tests.gateway.scripted import ScriptedFleet, sse_payloads, streamed_text
from warmroute.config import EngineEndpoint
from warmroute.errors import EngineOverloaded
from warmroute.gateway.faults import FaultJudge
from warmroute.gateway.membership import Membership
from warmroute.gateway.metrics import GatewayMetrics
from warmroute.gateway.policies import Decision, preference
from warmroute.gateway.proxy import Proxy

KEY = "faulty-conversation"
BODY: dict[str, Any] = {"model": "scripted-model", "max_tokens": 50,
                        "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
FAILED = "The request could not be processed"
UNAVAILABLE = "The service is currently unavailable"


def fleet() -> tuple[ScriptedFleet, tuple[str, ...]]:
    engines = ScriptedFleet("e1", "e2", "e3")
    return engines, preference(KEY, engines.ids)


async def prober_settled(engines: ScriptedFleet, engine_id: str) -> int:
    """The engine's probe count once the gateway's start probed it and its prober's first
    round ran (then probes come only from the proxy, or when a test runs one)."""
    await until(lambda: engines[engine_id].probes >= 2, "the prober's first round")
    return engines[engine_id].probes


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_422_is_the_answer_and_no_other_engine_sees_the_request(
    tmp_path: Path, stream: bool
) -> None:
    engines, (first, _, _) = fleet()
    engines[first].status, engines[first].error = 422, "the forward pass failed"
    async with in_process_gateway(engines, tmp_path) as gw:
        probes = await prober_settled(engines, first)
        answer = await gw.chat(STREAM if stream else BODY, KEY)
        metrics = await gw.metrics()
        assert sorted(gw.gateway.membership.healthy_ids()) == ["e1", "e2", "e3"]
        assert gw.in_flight() == {"e1": 0, "e2": 0, "e3": 0}
    assert answer.status_code == 422
    assert answer.headers["x-warmroute-engine"] == first
    assert [len(engines[e].received) for e in preference(KEY, engines.ids)] == [1, 0, 0]
    assert engines[first].probes == probes  # a 4xx needs no probe
    assert metric(metrics, "warmroute_gateway_ejections_total", engine=first) == 0
    assert metric(metrics, "warmroute_gateway_failovers_total", engine=first) == 0


async def test_a_request_level_error_event_ends_the_stream_and_is_not_resumed(
    tmp_path: Path,
) -> None:
    engines, (first, second, _) = fleet()
    engines[first].pieces, engines[first].ending = ["Hel", "lo"], "error-event"
    engines[first].event_code = FAILED
    async with in_process_gateway(engines, tmp_path) as gw:
        events = sse_payloads((await gw.chat(STREAM, KEY)).content)
        metrics = await gw.metrics()
        assert sorted(gw.gateway.membership.healthy_ids()) == ["e1", "e2", "e3"]
        assert gw.in_flight() == {"e1": 0, "e2": 0, "e3": 0}
        rows = gw.ledger()
    assert streamed_text(events) == "Hello"
    assert events[-1] == {"code": FAILED, "error": "engine step failed"}
    assert "[DONE]" not in events
    assert engines[second].received == []
    assert metric(metrics, "warmroute_gateway_stream_resumes_total", outcome="resumed") == 0
    assert metric(metrics, "warmroute_gateway_ejections_total", engine=first) == 0
    assert [(r.engine_id, r.completion_tokens) for r in rows] == [(first, 5)]  # what it got


async def test_a_request_level_error_event_fails_a_responses_stream_and_a_grpc_call_alone(
    tmp_path: Path,
) -> None:
    engines, (first, second, _) = fleet()
    engines[first].pieces, engines[first].ending = ["Hel", "lo"], "error-event"
    engines[first].event_code = FAILED
    async with in_process_gateway(engines, tmp_path) as gw:
        streamed = await gw.http.post("/v1/responses", json={
            "model": "scripted-model", "input": "hi", "stream": True},
            headers={"x-grok-conv-id": KEY})
        engines[first].status, engines[first].error = 422, "the forward pass failed"
        whole = await gw.http.post("/v1/responses", json={"model": "scripted-model",
                                                          "input": "hi"},
                                   headers={"x-grok-conv-id": KEY})
        assert sorted(gw.gateway.membership.healthy_ids()) == ["e1", "e2", "e3"]
    last = [line for line in streamed.text.splitlines() if line.startswith("data: ")][-1]
    assert last == f'data: {{"code":"{FAILED}","error":"engine step failed"}}'
    assert (whole.status_code, whole.json()) == (422, {"code": FAILED,
                                                       "error": "the forward pass failed"})
    assert engines[second].received == []


async def test_a_busy_engine_passes_the_request_on_and_stays_admitted(tmp_path: Path) -> None:
    engines, (first, second, third) = fleet()
    engines[first].status, engines[first].retry_after = 503, "2"
    async with in_process_gateway(engines, tmp_path) as gw:
        probes = await prober_settled(engines, first)
        moved = await gw.chat(BODY, KEY)
        healthy = sorted(gw.gateway.membership.healthy_ids())
        for engine_id in (second, third):
            engines[engine_id].status, engines[engine_id].retry_after = 503, "3"
        refused = await gw.chat(BODY, KEY)
        metrics = await gw.metrics()
    assert (moved.status_code, moved.headers["x-warmroute-engine"]) == (200, second)
    assert healthy == ["e1", "e2", "e3"]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert refused.json() == {"code": UNAVAILABLE, "error": "no engine could answer: " + "; ".join(
        f"{e}: HTTP 503 (busy)" for e in (first, second, third))}
    assert engines[first].probes == probes  # busy is not sick: no probe, no ejection
    assert metric(metrics, "warmroute_gateway_ejections_total", engine=first) == 0


async def test_a_5xx_whose_engine_passes_its_probe_is_the_answer_until_several_requests_fail(
    tmp_path: Path,
) -> None:
    engines, (first, second, _) = fleet()
    engines[first].status = 500
    async with in_process_gateway(engines, tmp_path, request_failures_to_eject=3) as gw:
        probes = await prober_settled(engines, first)
        same = [await gw.chat(BODY, KEY) for _ in range(4)]  # one request, again and again
        healthy_after_same = sorted(gw.gateway.membership.healthy_ids())
        other = await gw.chat({**BODY, "max_tokens": 7}, KEY)
        third = await gw.chat({**BODY, "max_tokens": 8}, KEY)  # the third different one
        metrics = await gw.metrics()
        healthy = gw.gateway.membership.healthy_ids()
    assert [r.status_code for r in same] == [500] * 4
    assert healthy_after_same == ["e1", "e2", "e3"]
    assert other.status_code == 500 and other.headers["x-warmroute-engine"] == first
    assert (third.status_code, third.headers["x-warmroute-engine"]) == (200, second)
    assert first not in healthy
    assert engines[first].probes - probes == 6  # one probe per 5xx
    assert len(engines[second].received) == 1
    assert metric(metrics, "warmroute_gateway_ejections_total", engine=first) == 1


async def test_a_5xx_is_a_request_failure_for_the_neutral_surfaces(tmp_path: Path) -> None:
    engines, (first, second, _) = fleet()
    engines[first].status, engines[first].error = 500, "kaput"
    async with in_process_gateway(engines, tmp_path) as gw:
        answer = await gw.http.post("/v1/responses", json={"model": "scripted-model",
                                                           "input": "hi"},
                                    headers={"x-grok-conv-id": KEY})
    assert (answer.status_code, answer.json()) == (422, {
        "code": FAILED, "error": "the engine answered HTTP 500: kaput"})
    assert engines[second].received == []


async def test_past_max_in_flight_a_request_is_refused_at_once(tmp_path: Path) -> None:
    engines, _ = fleet()
    hold = asyncio.Event()
    for engine_id in engines.ids:
        engines[engine_id].hold = hold
    async with in_process_gateway(engines, tmp_path, max_in_flight=2) as gw:
        held = [asyncio.ensure_future(gw.chat(BODY, KEY)) for _ in range(2)]
        await until(lambda: sum(gw.in_flight().values()) == 2, "two requests in flight")
        refused = await gw.chat(BODY, KEY)
        hold.set()
        answered = [(await h).status_code for h in held]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json() == {"code": UNAVAILABLE, "error":
                              "the gateway already has 2 requests in flight; retry shortly"}
    assert answered == [200, 200]


async def test_no_free_upstream_connection_is_a_503_and_ejects_nothing() -> None:
    def no_connection(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("no connection in time", request=request)

    endpoint = EngineEndpoint.of("http://127.0.0.1:1", "p1")
    membership = Membership([endpoint])
    membership.probe_succeeded("p1", membership.clock(), None)
    async with httpx.AsyncClient(transport=httpx.MockTransport(no_connection)) as client:
        proxy = Proxy(client, membership, GatewayMetrics(membership),
                      FaultJudge(membership, None))
        with pytest.raises(EngineOverloaded, match="every connection to the engines is busy"):
            await proxy.complete(Decision(("p1",), "keyed"), b"{}")
    assert membership.healthy_ids() == ["p1"]
    assert membership.engines["p1"].in_flight == 0
