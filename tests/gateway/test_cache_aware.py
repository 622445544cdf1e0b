"""The default `cache-aware` policy over real engines: conversations stay on one warm engine
(each turn hits every block the previous one computed) and new ones spread; keyless traffic
spreads and repeats hit; an engine killed mid-run costs no request, and its conversations settle
on a new home that they keep when the old engine returns. A hot conversation bounded by the
load cap is tested in-process (`test_proxy_inprocess.py`)."""

from __future__ import annotations

import math
import signal
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.gateway.harness import (
    Fleet,
    cached_tokens,
    chat_body,
    gateway_over,
    metric,
    opening,
    wait_for,
)
from tests.gateway.test_sticky import converse, keyless_spread_and_repeats, warm_after

pytestmark = pytest.mark.slow
POLICY = "cache-aware"


def test_conversations_stay_on_one_warm_engine_and_spread(fleet: Fleet) -> None:
    keys = [f"aware-conversation-{i}" for i in range(30)]
    with gateway_over(fleet.endpoints(), policy=POLICY, load_slack=10) as (url, gateway), \
            httpx.Client(timeout=60) as client:
        answers = converse(client, url, keys, turns=4, key_in="header")
        body = chat_body(opening("one streamed turn"), stream=True)
        with client.stream("POST", url + "/v1/chat/completions", json=body,
                           headers={"x-grok-conv-id": keys[0]}) as streamed:
            assert b"[DONE]" in b"".join(streamed.iter_bytes())
        metrics = client.get(url + "/metrics").text
        homes = {k: str(gateway.placer.home_of(k, tenant=None)) for k in keys}
        # every request's prefill work came off its engine's queue again
        assert set(gateway.membership.queued().values()) == {0.0}
    per_engine: Counter[str] = Counter()
    for key in keys:
        engines = {engine for engine, _ in answers[key]}
        assert engines == {homes[key]}, key
        per_engine[homes[key]] += 1
        for turn in range(1, 4):
            assert cached_tokens(answers[key][turn][1]) == warm_after(answers[key][turn - 1][1])
    assert set(per_engine) == set(fleet.ids)
    assert max(per_engine.values()) <= math.ceil(1.25 * 30 / len(fleet.ids)) + 1, per_engine
    decisions = {r: metric(metrics, "warmroute_gateway_routing_decisions_total", reason=r)
                 for r in ("sticky", "prefix", "least-loaded")}
    assert decisions["sticky"] == 91
    assert decisions["prefix"] + decisions["least-loaded"] == 30


def test_keyless_requests_spread_and_repeats_hit(fleet: Fleet) -> None:
    with gateway_over(fleet.endpoints(), policy=POLICY, load_slack=10) as (url, _), \
            httpx.Client(timeout=60) as client:
        keyless_spread_and_repeats(client, url, fleet)


def test_sigkill_of_a_home_fails_no_request_and_its_conversations_settle(fleet: Fleet) -> None:
    keys = [f"aware-failover-{i}" for i in range(12)]

    def ask(client: httpx.Client, url: str, key: str) -> tuple[int, str, float]:
        started = time.monotonic()
        response = client.post(url + "/v1/chat/completions", headers={"x-grok-conv-id": key},
                               json=chat_body(opening(f"{key}: hello"), max_tokens=4))
        return response.status_code, response.headers.get("x-warmroute-engine", ""), started

    with gateway_over(fleet.endpoints(), policy=POLICY) as (url, gateway), \
            httpx.Client(timeout=60) as client:
        before = {k: ask(client, url, k) for k in keys}
        assert all(status == 200 for status, _, _ in before.values())
        victim = before[keys[0]][1]
        moved = [k for k in keys if before[k][1] == victim]
        outcomes: list[tuple[str, int, str, float]] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(timeout=60) as own:
                while not stop.is_set():
                    outcomes.extend((k, *ask(own, url, k)) for k in keys)

        runner = threading.Thread(target=traffic)
        runner.start()
        try:
            wait_for(lambda: len(outcomes) >= len(keys), 30, "a round of traffic")
            killed_at = time.monotonic()
            fleet.procs[victim].kill(signal.SIGKILL)
            wait_for(lambda: len([o for o in outcomes if o[3] > killed_at]) >= 2 * len(keys),
                     60, "two rounds after the kill")
        finally:
            stop.set()
            runner.join()
        assert [o[1] for o in outcomes] == [200] * len(outcomes)
        new_homes = {k: gateway.placer.home_of(k, tenant=None) for k in moved}
        assert victim not in new_homes.values()
        for key, _, engine, started in outcomes:
            if started > killed_at + 2.0:  # once ejected, each conversation is at one home
                assert engine == gateway.placer.home_of(key, tenant=None), key
        fleet.restart(victim)
        wait_for(lambda: victim in gateway.membership.healthy_ids(), 10, "re-admission")
        after = {k: ask(client, url, k) for k in keys}
        metrics = client.get(url + "/metrics").text
    for key in keys:
        assert after[key][1] == (new_homes[key] if key in moved else before[key][1]), key
    assert metric(metrics, "warmroute_gateway_routing_decisions_total", reason="rehomed") == len(
        moved)
