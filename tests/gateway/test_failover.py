"""Must show 5 with real processes: an engine SIGKILLed mid-run costs no client a request; its
conversations move to their second choices and come back when it does. The failure rules
themselves (connect errors, timeouts, 5xx fail over; a 4xx passes through; re-admission by a
later probe) are tested in-process: `test_failover_inprocess.py`."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.gateway.harness import Fleet, chat_body, gateway_over, metric, opening, wait_for
from warmroute.gateway.policies import preference

pytestmark = pytest.mark.slow
VICTIM = "e2"


@dataclass
class Outcome:
    key: str
    started: float
    status: int
    engine: str


def ask(client: httpx.Client, url: str, key: str, max_tokens: int = 4) -> Outcome:
    started = time.monotonic()
    response = client.post(url + "/v1/chat/completions", headers={"x-grok-conv-id": key},
                           json=chat_body(opening(f"{key}: hello"), max_tokens=max_tokens))
    return Outcome(key, started, response.status_code,
                   response.headers.get("x-warmroute-engine", ""))


def test_sigkill_of_an_engine_fails_no_request_and_its_keys_move_and_return(
    fleet: Fleet,
) -> None:
    keys = [f"failover-{i}" for i in range(30)]
    pref = {k: preference(k, fleet.ids) for k in keys}
    victims = [k for k in keys if pref[k][0] == VICTIM]
    assert victims, "no conversation prefers the victim"
    second = {k: pref[k][1] if pref[k][0] == VICTIM else pref[k][0] for k in keys}

    with gateway_over(fleet.endpoints()) as (url, gateway), httpx.Client(timeout=60) as client:
        before = [ask(client, url, k) for k in keys]
        assert all(o.status == 200 and o.engine == pref[o.key][0] for o in before)

        outcomes: list[Outcome] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(timeout=60) as own:
                while not stop.is_set():
                    outcomes.extend(ask(own, url, k) for k in keys)

        long_request: list[Outcome] = []
        runner = threading.Thread(target=traffic)

        def long_run() -> None:
            with httpx.Client(timeout=60) as own:
                long_request.append(ask(own, url, victims[0], max_tokens=400))

        long_one = threading.Thread(target=long_run)
        runner.start()
        long_one.start()
        wait_for(lambda: gateway.membership.engines[VICTIM].in_flight > 0, 10,
                 "a request in flight on the victim")
        killed_at = time.monotonic()
        fleet.procs[VICTIM].kill(signal.SIGKILL)
        wait_for(lambda: len([o for o in outcomes if o.started > killed_at]) >= 2 * len(keys),
                 60, "two rounds of conversations after the kill")
        stop.set()
        runner.join()
        long_one.join()

        assert [o.status for o in outcomes + long_request] == [200] * (len(outcomes) + 1)
        assert long_request[0].engine == second[victims[0]]  # the in-flight one failed over
        for outcome in (o for o in outcomes if o.started > killed_at):
            assert outcome.engine == second[outcome.key], outcome

        fleet.restart(VICTIM)  # same port
        wait_for(lambda: VICTIM in gateway.membership.healthy_ids(), 10, "re-admission")
        after = [ask(client, url, k) for k in keys]
        assert all(o.status == 200 and o.engine == pref[o.key][0] for o in after)
        metrics = client.get(url + "/metrics").text
    assert metric(metrics, "warmroute_gateway_ejections_total", engine=VICTIM) >= 1
    assert metric(metrics, "warmroute_gateway_failovers_total", engine=VICTIM) >= 1
    assert metric(metrics, "warmroute_gateway_routing_decisions_total", reason="failover") >= 1
