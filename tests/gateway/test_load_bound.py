"""Must show 4: one hot key under concurrency stays within the bounded-load cap, and what
spills lands on the key's own second choice."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.gateway.harness import Fleet, chat_body, gateway_over, metric, opening, record_loads
from warmroute.gateway.policies import load_cap, preference

pytestmark = pytest.mark.slow
CLIENTS = 6
REQUESTS_PER_CLIENT = 5


def test_a_hot_key_is_bounded_and_spills_to_its_second_choice(fleet: Fleet) -> None:
    key = "the-hot-conversation"
    pref = preference(key, fleet.ids)
    with gateway_over(fleet.endpoints()) as (url, gateway):
        loads_seen = record_loads(gateway.membership)

        def client_run(client_index: int) -> list[str]:
            engines = []
            with httpx.Client(timeout=60) as client:
                for i in range(REQUESTS_PER_CLIENT):
                    body = chat_body(opening(f"client {client_index} request {i}"), max_tokens=8)
                    response = client.post(url + "/v1/chat/completions", json=body,
                                           headers={"x-grok-conv-id": key})
                    assert response.status_code == 200, response.text
                    engines.append(response.headers["x-warmroute-engine"])
            return engines

        with ThreadPoolExecutor(CLIENTS) as pool:
            served = [e for run in pool.map(client_run, range(CLIENTS)) for e in run]
        metrics = httpx.get(url + "/metrics").text

    assert len(loads_seen) == CLIENTS * REQUESTS_PER_CLIENT
    for loads in loads_seen:
        total = sum(loads.values())
        bound = load_cap(total - 1, len(loads), 0.25) + 1  # ⌈(1+ε)·average⌉ + 1
        assert max(loads.values()) <= bound, loads
    assert set(served) <= set(pref[:2])  # spill goes to the key's own second choice
    spilled = served.count(pref[1])
    assert spilled > 0, "six concurrent clients never overlapped"
    assert metric(metrics, "warmroute_gateway_routing_decisions_total", reason="spilled") == spilled
    assert metric(metrics, "warmroute_gateway_routing_decisions_total", reason="keyed") == (
        served.count(pref[0])
    )
