"""`engine_priority`: each request tells its engine when its first token is due (vLLM's
`priority`, lower first), so a short prefill is ranked before a long one that came a moment
earlier; a client's own `priority` never reaches an engine. Units, then the real gateway app
over scripted engines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from xai_sdk import AsyncClient
from xai_sdk.chat import user

from tests.gateway.inprocess import InProcess, in_process_gateway, until
from tests.gateway.scripted import Script, ScriptedFleet, sse_payloads, streamed_text
from tests.procs import free_port
from warmroute.gateway.membership import PRIORITY_RETRY_S
from warmroute.gateway.operations import engine_report
from warmroute.gateway.proxy import (
    BACKGROUND_DELAY_MS,
    due_ms,
    refuses_priority,
    with_priority,
)

ENGINE = "e1"


@pytest.mark.parametrize(("payload", "expected"), [
    (b'{"model":"m","stream":true}', {"priority": 7, "model": "m", "stream": True}),
    (b"{}", {"priority": 7}),
    (b'{ "model": "m" }', {"priority": 7, "model": "m"}),
])
def test_with_priority_puts_the_field_first(payload: bytes, expected: dict[str, Any]) -> None:
    sent = with_priority(payload, 7)
    assert sent.startswith(b'{"priority":7')
    assert orjson.loads(sent) == expected


def test_with_priority_leaves_what_is_not_an_object() -> None:
    assert with_priority(b"[1]", 7) == b"[1]"


def test_due_ms_is_now_plus_the_work() -> None:
    before = int(time.time() * 1000)
    due = due_ms(40.0, 10.0)
    after = int(time.time() * 1000)
    assert before + 400 <= due <= after + 400
    assert due_ms(0.0, 10.0) < due_ms(50.0, 10.0)


def test_due_ms_adds_at_most_its_bound() -> None:
    before = int(time.time() * 1000)
    due = due_ms(10_000.0, 10.0, 5_000.0)  # 100 s of work, bounded to 5 s
    after = int(time.time() * 1000)
    assert before + 5_000 <= due <= after + 5_000


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "scripted-model", "max_tokens": 8,
            "messages": [{"role": "user", "content": text}], **extra}


async def test_a_short_prompt_is_due_before_a_long_one_sent_just_before(tmp_path: Path) -> None:
    fleet = ScriptedFleet(ENGINE)
    async with in_process_gateway(fleet, tmp_path, policy="cache-aware",
                                  engine_priority=True) as gw:
        assert gw.gateway.proxy.gate is None  # the engine orders the work: nothing is held
        before = int(time.time() * 1000)
        long_ = await gw.chat(chat("long " * 4000, stream=True, priority=-(10**9)))
        between = int(time.time() * 1000)
        short = await gw.chat(chat("short turn", priority=-(10**9)))
        after = int(time.time() * 1000)
    assert long_.status_code == 200 and short.status_code == 200
    [long_sent, short_sent] = [body["priority"] for body in fleet[ENGINE].received]
    assert between <= short_sent < long_sent  # the client's own value never got through
    # ~20,000 bytes of prompt: ~80 chunks at 10 ms each, beyond its arrival
    assert long_sent - between > 400 and long_sent - before < 2_000
    assert short_sent - after < 100  # a few chunks


async def test_a_long_prompt_is_ranked_at_most_the_hold_bound_after_its_arrival(
        tmp_path: Path) -> None:
    fleet = ScriptedFleet(ENGINE)
    async with in_process_gateway(fleet, tmp_path, policy="cache-aware", engine_priority=True,
                                  admission_max_hold_s=0.2) as gw:
        before = int(time.time() * 1000)
        assert (await gw.chat(chat("long " * 4000))).status_code == 200
        after = int(time.time() * 1000)
    [sent] = [body["priority"] for body in fleet[ENGINE].received]
    assert before + 200 <= sent <= after + 200  # ~80 chunks would be 800 ms beyond


async def test_deferred_completions_rank_a_minute_behind_interactive_ones(
        tmp_path: Path) -> None:
    """A deferred completion's client reads it back later: on REST and gRPC alike it is due
    a minute after an interactive request that came at the same moment."""
    port = free_port()
    fleet = ScriptedFleet(ENGINE)
    received = fleet[ENGINE].received
    async with in_process_gateway(fleet, tmp_path, policy="cache-aware", engine_priority=True,
                                  grpc_port=port) as gw:
        before = int(time.time() * 1000)
        started = await gw.chat({**chat("background work"), "deferred": True})
        assert started.status_code == 200 and started.json()["request_id"]
        await until(lambda: len(received) == 1, "the deferred completion at its engine")
        assert (await gw.chat(chat("a client waits"))).status_code == 200
        sdk = AsyncClient(api_key="unused", api_host=f"127.0.0.1:{port}",
                          use_insecure_channel=True, timeout=30)
        conversation = sdk.chat.create(model="scripted-model", max_tokens=8)
        conversation.append(user("background work over gRPC"))
        await conversation.defer(interval=timedelta(milliseconds=20))
        after = int(time.time() * 1000)
    rest, interactive, grpc_deferred = (body["priority"] for body in received)
    assert before + BACKGROUND_DELAY_MS <= rest < after + BACKGROUND_DELAY_MS + 100
    assert before + BACKGROUND_DELAY_MS <= grpc_deferred < after + BACKGROUND_DELAY_MS + 100
    assert before <= interactive < after + 100 < rest


async def test_without_engine_priority_no_priority_reaches_an_engine(tmp_path: Path) -> None:
    fleet = ScriptedFleet(ENGINE)
    async with in_process_gateway(fleet, tmp_path, policy="cache-aware") as gw:
        assert gw.gateway.proxy.gate is not None
        for body in (chat("hello", priority=-5), chat("hello", stream=True, priority=3)):
            assert (await gw.chat(body)).status_code == 200
    assert [("priority" in body) for body in fleet[ENGINE].received] == [False, False]


@pytest.mark.parametrize(("policy", "ranked"), [
    ("priority", True), (None, True), ("fcfs", False), ("some-future-policy", True)])
async def test_an_engine_that_says_it_schedules_fcfs_is_sent_no_priority(
        tmp_path: Path, policy: str | None, ranked: bool) -> None:
    fleet = ScriptedFleet(ENGINE)
    fleet[ENGINE].scheduling_policy = policy
    async with in_process_gateway(fleet, tmp_path, policy="cache-aware",
                                  engine_priority=True) as gw:
        for body in (chat("hello"), chat("hello", stream=True)):
            assert (await gw.chat(body)).status_code == 200
        fleet[ENGINE].scheduling_policy = "priority"  # restarted with another policy
        await gw.probe()
        assert (await gw.chat(chat("again"))).status_code == 200
    assert [("priority" in body) for body in fleet[ENGINE].received] == [ranked, ranked, True]


@pytest.mark.parametrize("stream", [True, False])
async def test_an_engine_that_refuses_a_priority_is_asked_again_without_and_then_sent_none(
        tmp_path: Path, stream: bool) -> None:
    """vLLM without `--scheduling-policy priority` says nothing of it in its health answer and
    refuses a ranked request with a 400: the gateway sends the request again without the rank,
    and sends that engine no rank for a while (`PRIORITY_RETRY_S`, tested below)."""
    fleet = ScriptedFleet(ENGINE)
    fleet[ENGINE].refuses_priority = True
    async with in_process_gateway(fleet, tmp_path, policy="cache-aware",
                                  engine_priority=True) as gw:
        first = await gw.chat(chat("hello", stream=stream))
        assert first.status_code == 200
        text = (streamed_text(sse_payloads(first.content)) if stream
                else first.json()["choices"][0]["message"]["content"])
        assert text == "Hello world"
        assert (await gw.chat(chat("again", stream=not stream))).status_code == 200
        assert gw.gateway.membership.takes_priority(ENGINE) is False
        rows = gw.ledger()
    assert [("priority" in body) for body in fleet[ENGINE].received] == [True, False, False]
    assert len(rows) == 2  # one answer each, the refusal unbilled


async def test_an_engine_that_refused_a_priority_is_asked_again_later_and_when_it_returns(
        tmp_path: Path) -> None:
    """A refusal lasts `PRIORITY_RETRY_S`: then the engine is sent a rank once more (its
    operator may have restarted it with a priority policy), and at once when it comes back
    after an ejection. The operators' engine list says which engines are sent one."""
    fleet = ScriptedFleet(ENGINE)
    fleet[ENGINE].refuses_priority = True
    async with in_process_gateway(fleet, tmp_path, policy="cache-aware",
                                  engine_priority=True) as gw:
        assert (await gw.chat(chat("one"))).status_code == 200  # refused, then sent unranked
        assert [row["takes_priority"] for row in await admin_engines(gw)] == [False]
        gw.clock.advance(PRIORITY_RETRY_S - 1)
        assert (await gw.chat(chat("two"))).status_code == 200  # still none
        gw.clock.advance(1)
        assert [row["takes_priority"] for row in await admin_engines(gw)] == [True]
        assert (await gw.chat(chat("three"))).status_code == 200  # asked, refused again
        gw.gateway.membership.eject(ENGINE, "test")
        gw.clock.advance(1)
        await gw.probe()  # back: perhaps restarted with another policy
        fleet[ENGINE].refuses_priority = False
        assert (await gw.chat(chat("four", stream=True))).status_code == 200
        assert (await gw.chat(chat("five"))).status_code == 200
        rows = gw.ledger()
    ranked = [("priority" in body) for body in fleet[ENGINE].received]
    assert ranked == [True, False, False, True, False, True, True]
    assert len(rows) == 5


async def test_the_engine_list_says_no_engine_is_ranked_with_engine_priority_off(
        tmp_path: Path) -> None:
    fleet = ScriptedFleet("e1", "e2")
    fleet["e1"].scheduling_policy, fleet["e2"].scheduling_policy = "fcfs", None
    async with in_process_gateway(fleet, tmp_path) as gw:
        rows = await admin_engines(gw)
    assert [(row["scheduling_policy"], row["takes_priority"]) for row in rows] == [
        ("fcfs", None), (None, None)]


async def admin_engines(gw: InProcess) -> list[dict[str, Any]]:
    """The rows of `GET /v1/admin/engines` (`test_operators` reads them over HTTP)."""
    return await engine_report(gw.gateway)


def test_refusals_of_a_priority_are_told_from_other_errors() -> None:
    vllm = b'{"message":"Got priority 17 but Priority scheduling is not enabled."}'
    assert refuses_priority(400, vllm)
    assert refuses_priority(400, b'{"error":"priority needs an engine started with '
                                 b'--scheduling-policy priority"}')
    assert not refuses_priority(400, b'{"error":"max_tokens must be at least 1"}')
    echoed = b'{"detail":[{"msg":"bad max_tokens","input":{"priority":17,"max_tokens":-1}}]}'
    assert not refuses_priority(400, echoed)  # a validation error naming the field
    assert not refuses_priority(500, vllm)


async def placed_then_sent_on(fleet: ScriptedFleet, tmp_path: Path, release: asyncio.Event,
                              heal: Callable[[Script], None]
                              ) -> tuple[httpx.Response, dict[str, Any], dict[str, Any]]:
    """One stream over two engines that both fail it once `release` is set: the engine not
    tried first is healed (`heal`) and the first let go 50 ms later. The answer, then the
    bodies the placement and the engine that took over were sent."""
    async with in_process_gateway(fleet, tmp_path, policy="cache-aware",
                                  engine_priority=True) as gw:
        call = asyncio.create_task(gw.chat(chat("hello", stream=True)))
        await until(lambda: bool(fleet["e1"].received or fleet["e2"].received),
                    "the first attempt")
        first, then = ("e1", "e2") if fleet["e1"].received else ("e2", "e1")
        heal(fleet[then])
        await asyncio.sleep(0.05)  # the engine taking over is sent the request later
        release.set()
        answer = await call
    [placed], [taken_over] = fleet[first].received, fleet[then].received
    return answer, placed, taken_over


async def test_a_failover_keeps_the_priority_set_at_placement(tmp_path: Path) -> None:
    fleet = ScriptedFleet("e1", "e2")
    release = asyncio.Event()
    for engine_id in ("e1", "e2"):
        fleet[engine_id].failure, fleet[engine_id].hold = "disconnect", release

    def heal(script: Script) -> None:
        script.failure, script.hold = None, None

    answer, tried, answered = await placed_then_sent_on(fleet, tmp_path, release, heal)
    assert answer.status_code == 200
    assert tried["priority"] == answered["priority"]


async def test_a_resumed_stream_keeps_the_priority_set_at_placement(tmp_path: Path) -> None:
    fleet = ScriptedFleet("e1", "e2")
    release = asyncio.Event()
    for engine_id in ("e1", "e2"):
        fleet[engine_id].pieces = ["Hel", "lo ", "world"]
        fleet[engine_id].ending, fleet[engine_id].hold = "reset", release
        fleet[engine_id].hold_after = 1

    def heal(script: Script) -> None:
        script.ending, script.hold = "done", None

    answer, placed, continued = await placed_then_sent_on(fleet, tmp_path, release, heal)
    assert answer.status_code == 200
    assert streamed_text(sse_payloads(answer.content)) == "Hello world"
    assert continued["messages"][-1] == {"role": "assistant", "content": "Hello world"}
    assert placed["priority"] == continued["priority"]
