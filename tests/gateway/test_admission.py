"""The admission gate (`gateway/admission.py`): a request placed on an engine that has the
gate's `max_work` sent and not yet prefilled waits, the least work first unless a long one has
waited long enough; nobody waits past `max_hold_s`, a request that leaves while waiting gives
its place back, an engine lost lets its waiters go, a JSON answer's prompt holds nobody. Then
the same through the real gateway app over a scripted engine: a short turn that came last
reaches the engine before a long prompt that came before it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.harness import metric
from tests.gateway.inprocess import in_process_gateway, until
from tests.gateway.scripted import ScriptedFleet, sse_payloads, streamed_text
from warmroute.config import EngineEndpoint, GatewayConfig
from warmroute.gateway.admission import AdmissionGate, AdmissionParams
from warmroute.gateway.membership import Membership

ENGINE = "e1"


def healthy_membership() -> Membership:
    membership = Membership([EngineEndpoint.of("http://127.0.0.1:1", ENGINE)])
    membership.probe_succeeded(ENGINE, 0.0, "m")
    return membership


class Requests:
    """Requests placed on the one engine, as the proxy places them: the work acquired, then
    the gate; `gone` lists them in the order the gate let them go."""

    def __init__(self, params: AdmissionParams) -> None:
        self.membership = healthy_membership()
        self.waits: list[float] = []
        self.gate = AdmissionGate(self.membership, params, self.waits.append)
        self.gone: list[str] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.work: dict[str, float] = {}

    async def place(self, name: str, work: float, stream: bool = True) -> None:
        """Place one, and let the loop run until it has gone or is waiting."""
        self.work[name] = work
        self.membership.acquire(ENGINE, work)

        async def run() -> None:
            try:
                await self.gate.admit(ENGINE, work)
            except BaseException:
                self.membership.release(ENGINE, work)
                raise
            if not stream:
                self.gate.json_sent(ENGINE, work)
            self.gone.append(name)

        self.tasks[name] = asyncio.create_task(run())
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def first_token(self, name: str) -> None:
        self.membership.prefilled(ENGINE, self.work[name])
        for _ in range(4):
            await asyncio.sleep(0)

    def queued(self) -> float:
        return self.membership.queued()[ENGINE]


async def test_under_its_work_a_request_goes_without_waiting() -> None:
    requests = Requests(AdmissionParams(max_work=64))
    requests.membership.acquire(ENGINE, 30)
    admitted = requests.gate.admit(ENGINE, 30)
    with pytest.raises(StopIteration):  # never suspended: no task, no await on the fast path
        admitted.send(None)
    requests.membership.acquire(ENGINE, 200)  # 30 sent, under 64: a large one goes too
    admitted = requests.gate.admit(ENGINE, 200)
    with pytest.raises(StopIteration):
        admitted.send(None)
    assert requests.gate.waiting(ENGINE) == 0


async def test_the_least_work_goes_first_one_prefill_at_a_time() -> None:
    requests = Requests(AdmissionParams(max_work=4, ms_per_chunk=10, max_hold_s=5))
    await requests.place("first", 20)
    await requests.place("long", 100)
    await requests.place("short", 5)
    await requests.place("middle", 30)
    assert requests.gone == ["first"]
    assert requests.gate.waiting(ENGINE) == 3
    assert requests.queued() == 155  # placement sees what waits here too
    await requests.first_token("first")
    assert requests.gone == ["first", "short"]  # 5 sent: over 4, the next waits for it
    await requests.first_token("short")
    assert requests.gone == ["first", "short", "middle"]
    await requests.first_token("middle")
    assert requests.gone == ["first", "short", "middle", "long"]
    assert len(requests.waits) == 3 and min(requests.waits) >= 0


async def test_a_long_prompt_that_waited_long_enough_is_not_overtaken() -> None:
    requests = Requests(AdmissionParams(max_work=4, ms_per_chunk=1, max_hold_s=5))
    await requests.place("first", 20)
    await requests.place("long", 100)  # its turn: its arrival + 0.1 s
    await asyncio.sleep(0.2)
    await requests.place("short", 5)  # its arrival (0.2 s later) + 0.005 s
    await requests.first_token("first")
    assert requests.gone == ["first", "long"]
    await requests.first_token("long")
    assert requests.gone == ["first", "long", "short"]


async def test_nobody_waits_longer_than_max_hold() -> None:
    requests = Requests(AdmissionParams(max_work=25, ms_per_chunk=10, max_hold_s=0.05))
    await requests.place("first", 26)
    await requests.place("second", 30)
    assert requests.gone == ["first"]
    await asyncio.wait_for(requests.tasks["second"], 2.0)  # no first token ever came
    assert requests.gone == ["first", "second"]
    assert requests.waits[0] >= 0.05
    assert requests.gate.waiting(ENGINE) == 0
    await requests.first_token("first")
    await requests.place("third", 10)  # the second is at the engine now, prefilling
    assert requests.gone == ["first", "second"]
    await requests.first_token("second")
    assert requests.gone == ["first", "second", "third"]


async def test_a_request_that_leaves_while_waiting_gives_its_place_back() -> None:
    requests = Requests(AdmissionParams(max_work=4, ms_per_chunk=10, max_hold_s=5))
    await requests.place("first", 20)
    await requests.place("leaves", 5)
    await requests.place("stays", 30)
    requests.tasks["leaves"].cancel()
    with pytest.raises(asyncio.CancelledError):
        await requests.tasks["leaves"]
    assert requests.gate.waiting(ENGINE) == 1
    assert requests.queued() == 50  # its work is gone from placement's view
    assert requests.gone == ["first"]  # the first is still prefilling: no room made
    await requests.first_token("first")
    assert requests.gone == ["first", "stays"]
    assert requests.queued() == 30


async def test_an_engine_lost_lets_its_waiters_go() -> None:
    requests = Requests(AdmissionParams(max_work=4, ms_per_chunk=10, max_hold_s=5))
    await requests.place("first", 20)
    await requests.place("second", 10)
    await requests.place("third", 10)
    requests.membership.eject(ENGINE, "connect error")
    await asyncio.wait_for(asyncio.gather(requests.tasks["second"], requests.tasks["third"]),
                           2.0)
    assert sorted(requests.gone) == ["first", "second", "third"]


async def test_a_json_answers_prompt_holds_no_stream() -> None:
    requests = Requests(AdmissionParams(max_work=4, ms_per_chunk=10, max_hold_s=5))
    await requests.place("json", 100, stream=False)
    await requests.place("stream", 10)
    assert requests.gone == ["json", "stream"]  # the JSON one counts for placement only
    await requests.place("next", 10)
    assert requests.gone == ["json", "stream"]  # the stream's prefill holds the next
    requests.gate.json_done(ENGINE, 100)
    requests.membership.release(ENGINE, 100)  # the JSON answer ended
    assert requests.gone == ["json", "stream"]
    await requests.first_token("stream")
    assert requests.gone == ["json", "stream", "next"]


async def test_with_no_work_set_nobody_waits() -> None:
    requests = Requests(AdmissionParams(max_work=0))
    await requests.place("first", 500)
    await requests.place("second", 500)
    assert requests.gone == ["first", "second"]


def test_admission_settings_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="admission"):
        GatewayConfig(admission_work=-1)
    with pytest.raises(ValueError, match="admission"):
        AdmissionParams(max_hold_s=-1)


def chat(text: str) -> dict[str, Any]:
    return {"model": "scripted-model", "max_tokens": 8, "stream": True,
            "messages": [{"role": "user", "content": text}]}


async def test_through_the_gateway_a_short_turn_overtakes_a_long_prompt(tmp_path: Path) -> None:
    fleet = ScriptedFleet(ENGINE)
    engine = fleet[ENGINE]
    engine.hold, engine.hold_after = asyncio.Event(), 0  # first tokens wait for the test
    first, long, short = "first " * 2000, "long " * 4000, "short turn"
    async with in_process_gateway(fleet, tmp_path, policy="cache-aware",
                                  admission_work=1.0) as gw:
        gate = gw.gateway.proxy.gate
        assert gate is not None
        calls = [gw.call(chat(first), key="a"), gw.call(chat(long), key="b"),
                 gw.call(chat(short), key="c")]
        await calls[0].__aenter__()
        await until(lambda: len(engine.received) == 1, "the first request at the engine")
        await calls[1].__aenter__()
        await until(lambda: gate.waiting(ENGINE) == 1, "the long prompt held")
        await calls[2].__aenter__()
        await until(lambda: gate.waiting(ENGINE) == 2, "the short turn held")
        assert len(engine.received) == 1
        held = await gw.metrics()
        engine.hold.set()
        bodies = [await call.rest() for call in calls]
        for call in calls:
            await call.leave()
        metrics = await gw.metrics()
    arrived = [b["messages"][0]["content"] for b in engine.received]
    assert arrived == [first, short, long]
    assert [call.status for call in calls] == [200, 200, 200]
    assert [streamed_text(sse_payloads(b)) for b in bodies] == ["Hello world"] * 3
    assert metric(metrics, "warmroute_gateway_admission_wait_seconds_count") == 2
    assert metric(held, "warmroute_gateway_admission_waiting", engine=ENGINE) == 2
    assert metric(metrics, "warmroute_gateway_admission_waiting", engine=ENGINE) == 0


async def test_a_request_waiting_for_an_engine_that_is_lost_fails_over(tmp_path: Path) -> None:
    fleet = ScriptedFleet("e1", "e2")
    for script in fleet.scripts.values():
        script.hold, script.hold_after = asyncio.Event(), 0
    async with in_process_gateway(fleet, tmp_path, policy="cache-aware", admission_work=1.0,
                                  admission_max_hold_s=60.0) as gw:
        gate = gw.gateway.proxy.gate
        assert gate is not None
        first = gw.call(chat("first " * 2000), key="conversation")
        await first.__aenter__()
        await until(lambda: sum(len(s.received) for s in fleet.scripts.values()) == 1,
                    "the first turn at its engine")
        home = next(s for s in fleet.scripts.values() if s.received)
        other = next(s for s in fleet.scripts.values() if s is not home)
        second = gw.call(chat("second turn"), key="conversation")  # sticky: the same home
        await second.__aenter__()
        await until(lambda: gate.waiting(home.engine_id) == 1, "the second turn held")
        # wedged (its probes time out) but still taking connections: nothing more goes there
        gw.gateway.membership.eject(home.engine_id, "probe timed out")
        other.hold.set()
        answer = await second.rest()
        await second.leave()
        assert home.hold is not None
        home.hold.set()
        await first.leave()
    assert second.status == 200
    assert second.headers["x-warmroute-engine"] == other.engine_id
    assert streamed_text(sse_payloads(answer)) == "Hello world"
    assert [b["messages"][0]["content"] for b in other.received] == ["second turn"]
    assert len(home.received) == 1


async def test_a_json_answer_let_go_holds_no_stream_behind_it(tmp_path: Path) -> None:
    fleet = ScriptedFleet(ENGINE)
    engine = fleet[ENGINE]
    first_token = asyncio.Event()
    engine.hold, engine.hold_after = first_token, 0
    async with in_process_gateway(fleet, tmp_path, policy="cache-aware", admission_work=1.0,
                                  admission_ms_per_chunk=0.0, admission_max_hold_s=30.0) as gw:
        gate = gw.gateway.proxy.gate
        assert gate is not None
        calls = [gw.call(chat("first " * 2000), key="a"),
                 gw.call({**chat("json " * 2000), "stream": False}, key="b"),
                 gw.call(chat("short turn"), key="c")]
        await calls[0].__aenter__()
        await until(lambda: len(engine.received) == 1, "the first request at the engine")
        for waiting, call in enumerate(calls[1:], start=1):
            await call.__aenter__()
            await until(lambda: gate.waiting(ENGINE) == waiting, "held")  # noqa: B023
        decoding = engine.hold = asyncio.Event()  # the JSON answer takes long to decode
        first_token.set()
        # the JSON answer went first and its first token is never seen: the stream goes too
        await until(lambda: len(engine.received) == 3, "the stream at the engine", timeout=2.0)
        decoding.set()
        for call in calls:
            await call.rest()
            await call.leave()
    assert [call.status for call in calls] == [200, 200, 200]


async def test_a_json_answer_that_failed_over_holds_no_stream(tmp_path: Path) -> None:
    fleet = ScriptedFleet("e1", "e2")
    fleet["e1"].failure = "connect"
    decoding = fleet["e2"].hold = asyncio.Event()
    fleet["e2"].hold_after = 3  # a JSON answer waits for it; a stream's first tokens do not
    async with in_process_gateway(fleet, tmp_path, policy="cache-aware",
                                  admission_max_hold_s=30.0) as gw:
        answer = None
        for key in (f"k{i}" for i in range(20)):  # a key the JSON answer is placed on e1 for
            answer = gw.call({**chat("json " * 12000), "stream": False}, key=key)
            await answer.__aenter__()
            await until(lambda: len(fleet["e2"].received) == 1, "the JSON answer at e2")
            if fleet["e1"].received:
                break
            await answer.leave()
            fleet["e2"].received.clear()
        assert answer is not None and fleet["e1"].received
        assert gw.gateway.membership.engines["e2"].queued > 128  # counted for placement
        stream = gw.call(chat("short turn"), key="s")
        await stream.__aenter__()
        await until(lambda: len(fleet["e2"].received) == 2, "the stream at e2", timeout=2.0)
        decoding.set()
        for call in (answer, stream):
            await call.rest()
            await call.leave()
    assert (answer.status, stream.status) == (200, 200)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_leaves_while_held_gives_its_place_back(
        tmp_path: Path, stream: bool) -> None:
    fleet = ScriptedFleet(ENGINE)
    engine = fleet[ENGINE]
    engine.hold, engine.hold_after = asyncio.Event(), 0
    async with in_process_gateway(fleet, tmp_path, policy="cache-aware", admission_work=1.0,
                                  admission_max_hold_s=0.5) as gw:
        gate, state = gw.gateway.proxy.gate, gw.gateway.membership.engines[ENGINE]
        assert gate is not None
        first = gw.call(chat("first " * 2000), key="a")
        await first.__aenter__()
        await until(lambda: len(engine.received) == 1, "the first request at the engine")
        queued, in_flight = state.queued, state.in_flight
        held = gw.call({**chat("held " * 300), "stream": stream}, key="b")
        await held.__aenter__()
        await until(lambda: gate.waiting(ENGINE) == 1, "held")
        await held.leave(timeout=1.0)
        assert (gate.waiting(ENGINE), state.queued, state.in_flight) == (0, queued, in_flight)
        await asyncio.sleep(0.7)  # past the longest hold: it never reaches the engine
        assert len(engine.received) == 1
        engine.hold.set()
        await first.rest()
        await first.leave()
    assert held.status == 499


def test_a_turn_moved_to_the_engine_holding_its_history_keeps_its_prefill(
        tmp_path: Path) -> None:
    from warmroute.gateway.conversations import prefer
    from warmroute.gateway.gateway import Gateway
    from warmroute.gateway.policies import Decision

    endpoints = tuple(EngineEndpoint.of(f"http://127.0.0.1:{port}", f"e{port}")
                      for port in (1, 2))
    gateway = Gateway(GatewayConfig(engines=endpoints, data_dir=tmp_path))
    for endpoint in endpoints:
        gateway.membership.probe_succeeded(endpoint.engine_id, 0.0, "m")
    moved = prefer(Decision(("e1", "e2"), "prefix", 37.0), "e2", gateway)
    assert (moved.ranked, moved.reason, moved.work) == (("e2", "e1"), "prefix", 37.0)
