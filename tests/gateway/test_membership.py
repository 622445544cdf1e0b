"""Health state: ejection, re-admission by probes, and probes that race a crash."""

from __future__ import annotations

import asyncio
import random

from warmroute.config import EngineEndpoint
from warmroute.gateway.membership import PRIORITY_RETRY_S, Membership


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def membership(clock: Clock) -> tuple[Membership, list[tuple[str, bool, str]]]:
    m = Membership([EngineEndpoint.of("http://h:1", "a"), EngineEndpoint.of("http://h:2", "b")],
                   failures_to_eject=2, clock=clock)
    events: list[tuple[str, bool, str]] = []
    m.listeners.append(lambda *event: events.append(event))
    return m, events


def test_probes_admit_and_repeated_failures_eject() -> None:
    clock = Clock()
    m, events = membership(clock)
    assert m.snapshot() == ()
    m.probe_succeeded("a", clock(), "builtin:tiny")
    assert [e.engine_id for e in m.snapshot()] == ["a"]
    assert m.engines["a"].model == "builtin:tiny"
    m.probe_failed("a", "probe: ConnectError")
    assert m.healthy_ids() == ["a"]  # one failure is not enough
    m.probe_failed("a", "probe: ConnectError")
    assert m.healthy_ids() == []
    assert events == [("a", True, "probe"), ("a", False, "probe: ConnectError")]


def test_a_probe_that_started_before_a_passive_ejection_cannot_readmit() -> None:
    clock = Clock()
    m, _ = membership(clock)
    m.probe_succeeded("b", clock(), None)
    probe_started = clock()
    clock.now += 0.5
    m.eject("b", "ConnectError")
    m.probe_succeeded("b", probe_started, None)
    assert m.healthy_ids() == []
    clock.now += 1.0
    m.probe_succeeded("b", clock(), None)
    assert m.healthy_ids() == ["b"]


def test_in_flight_counts_show_in_the_snapshot() -> None:
    clock = Clock()
    m, _ = membership(clock)
    for engine_id in ("a", "b"):
        m.probe_succeeded(engine_id, clock(), None)
    m.acquire("a")
    m.acquire("a")
    m.release("a")
    m.release("b")  # never below zero
    assert {e.engine_id: e.in_flight for e in m.snapshot()} == {"a": 1, "b": 0}


def test_a_prefill_moved_to_an_engine_is_told_and_its_first_token_releases_it() -> None:
    """Shared routing state reserves a moved request's prefill where it went (no placement
    reserved it there): a move with work is told; a placed request or one without work is not."""
    m, _ = membership(Clock())
    moves: list[tuple[str, float]] = []
    firsts: list[tuple[str, float]] = []
    m.move_listeners.append(lambda *move: moves.append(move))
    m.prefill_listeners.append(lambda *first: firsts.append(first))
    m.acquire("a", 6.0)  # where it was placed
    m.acquire("b", 0.0, moved=True)  # nothing to reserve
    m.acquire("b", 6.0, moved=True)  # failed over from a
    m.release("a", 6.0)  # a's attempt failed: its prefill leaves a's queue
    assert moves == [("b", 6.0)] and firsts == [("a", 6.0)]
    m.prefilled("b", 6.0)
    assert firsts == [("a", 6.0), ("b", 6.0)]
    assert {e: m.engines[e].queued for e in ("a", "b")} == {"a": 0.0, "b": 0.0}


def test_health_answers_size_the_gateways_picture_of_each_cache() -> None:
    from warmroute.config import GatewayConfig
    from warmroute.gateway.features import CHUNK_BYTES
    from warmroute.gateway.gateway import Gateway
    from warmroute.gateway.policies import RequestFeatures

    gateway = Gateway(GatewayConfig(engines=(EngineEndpoint.of("http://h:1", "a"),
                                             EngineEndpoint.of("http://h:2", "b"))))
    m = gateway.membership
    m.probe_succeeded("a", m.clock(), None, cache_chars=10 * CHUNK_BYTES)
    m.probe_succeeded("b", m.clock(), None)  # an engine that does not say: the default
    decision = asyncio.run(gateway.route(RequestFeatures(key="k", chunks=tuple(range(30)))))
    index = gateway.placer.index
    assert index.capacity_of("a") == 10
    assert index.capacity_of("b") == index.default_capacity
    assert index.size(decision.engine_id) == (10 if decision.engine_id == "a" else 30)
    m.eject(decision.engine_id, "test")  # an ejected engine's picture is dropped
    assert index.size(decision.engine_id) == 0


def test_cache_size_is_read_from_a_health_answer() -> None:
    from warmroute.gateway.health import DEFAULT_CHARS_PER_TOKEN, cache_chars

    assert cache_chars({"cache_tokens": 1000, "chars_per_token": 5.0}) == 5000
    assert cache_chars({"cache_tokens": 1000}) == int(1000 * DEFAULT_CHARS_PER_TOKEN)
    assert cache_chars({"cache_tokens": 1000, "chars_per_token": "x"}) == 4000
    for bad in ({}, {"cache_tokens": 0}, {"cache_tokens": "9"}, {"cache_tokens": True}):
        assert cache_chars(bad) is None


def test_queued_prefill_work_is_added_on_acquire_and_taken_off_once_prefilled() -> None:
    clock = Clock()
    m, _ = membership(clock)
    m.probe_succeeded("a", clock(), None)
    m.acquire("a", 5.0)
    m.acquire("a", 2.0)
    assert m.queued() == {"a": 7.0} and m.loads() == {"a": 2}
    m.prefilled("a", 5.0)
    m.release("a")
    assert m.queued() == {"a": 2.0} and m.loads() == {"a": 1}
    m.prefilled("a", 9.0)  # never below zero
    assert m.queued() == {"a": 0.0}


def test_the_loads_placement_reads_follow_every_request_and_health_change() -> None:
    """`loads` and `queued` are kept as requests come, get their first token and go, and as
    engines are ejected and admitted: after each of 3,000 random steps they are exactly what
    the engines' states say, healthy engines only, in the engines' order."""
    rng = random.Random(11)
    clock = Clock()
    m = Membership([EngineEndpoint.of(f"http://h:{i}", f"e{i}") for i in range(6)],
                   failures_to_eject=1, clock=clock)
    ids = list(m.engines)
    placed: list[tuple[str, float]] = []
    for _ in range(3_000):
        clock.now += 1.0
        step, engine = rng.random(), rng.choice(ids)
        if step < 0.35:
            work = float(rng.randint(0, 9))
            m.acquire(engine, work, moved=rng.random() < 0.1)
            placed.append((engine, work))
        elif step < 0.55 and placed:
            engine, work = placed.pop(rng.randrange(len(placed)))
            m.release(engine, work)
        elif step < 0.7 and placed:
            engine, work = placed[rng.randrange(len(placed))]
            m.prefilled(engine, work / 2)
        elif step < 0.85:
            m.probe_succeeded(engine, clock.now, None)
        else:
            m.probe_failed(engine, "probe: ConnectError")
        healthy = [s for s in m.engines.values() if s.healthy]
        assert list(m.loads().items()) == [(s.engine_id, s.in_flight) for s in healthy]
        assert list(m.queued().items()) == [(s.engine_id, s.queued) for s in healthy]


def test_a_refused_priority_is_tried_again_after_a_while_or_when_the_engine_returns() -> None:
    clock = Clock()
    m, _ = membership(clock)
    m.probe_succeeded("a", clock(), None)
    m.probe_succeeded("b", clock(), None, scheduling_policy="fcfs")
    assert (m.takes_priority("a"), m.takes_priority("b")) == (True, False)
    m.refused_priority("a")
    clock.now += PRIORITY_RETRY_S - 0.5
    assert not m.takes_priority("a")
    clock.now += 0.5
    assert m.takes_priority("a")
    m.refused_priority("a")
    m.probe_succeeded("a", clock(), None)  # healthy all along: still refused
    assert not m.takes_priority("a")
    m.eject("a", "crashed")
    clock.now += 1
    m.probe_succeeded("a", clock(), None)  # back, perhaps with another policy
    assert m.takes_priority("a")
    m.probe_succeeded("b", clock(), None, scheduling_policy="priority")  # restarted so
    assert m.takes_priority("b")
