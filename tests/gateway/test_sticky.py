"""Must show 1, 2 and 6: conversations stick to one warm engine; keyless traffic spreads.

Requests are sent one at a time so that no request is ever spilled by the load bound: each
conversation must then land on its key's first rendezvous choice, exactly.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import httpx
import pytest

from tests.gateway.harness import (
    Fleet,
    cached_tokens,
    chat_body,
    gateway_over,
    metric,
    opening,
)
from warmroute.gateway.policies import preference

pytestmark = pytest.mark.slow
BLOCK = 16


def warm_after(previous: dict[str, Any]) -> int:
    """The cached tokens of the next turn on the same engine: every full block the previous
    turn computed (its prompt and its reply but the reply's last token, never computed)."""
    usage = previous["usage"]
    return BLOCK * ((usage["prompt_tokens"] + usage["completion_tokens"] - 1) // BLOCK)


def converse(
    client: httpx.Client, url: str, keys: list[str], turns: int, key_in: str
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Turn 1 of every conversation, then turn 2 of every one, ...: (engine, answer) per turn."""
    histories = {k: opening(f"Conversation {k} begins: what is a prefix cache for?") for k in keys}
    answers: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for turn in range(turns):
        for key in keys:
            if turn:
                histories[key].append(
                    {"role": "user", "content": f"Turn {turn + 1} of {key}: tell me more."}
                )
            extra: dict[str, Any] = {"prompt_cache_key": key} if key_in == "body" else {}
            headers = {"x-grok-conv-id": key} if key_in == "header" else {}
            response = client.post(
                url + "/v1/chat/completions", json=chat_body(histories[key], **extra),
                headers=headers,
            )
            assert response.status_code == 200, response.text
            answer = response.json()
            answers[key].append((response.headers["x-warmroute-engine"], answer))
            histories[key].append(
                {"role": "assistant", "content": answer["choices"][0]["message"]["content"]}
            )
    return answers


@pytest.mark.parametrize("key_in", ["header", "body"])
def test_thirty_conversations_of_four_turns_stay_on_one_warm_engine(
    fleet: Fleet, key_in: str
) -> None:
    """Must show 1 (x-grok-conv-id) and 2 (prompt_cache_key in the body)."""
    keys = [f"{key_in}-conversation-{i}" for i in range(30)]
    with gateway_over(fleet.endpoints()) as (url, _), httpx.Client(timeout=60) as client:
        answers = converse(client, url, keys, turns=4, key_in=key_in)
        metrics = client.get(url + "/metrics").text
    used: Counter[str] = Counter()
    for key in keys:
        engines = {engine for engine, _ in answers[key]}
        assert engines == {preference(key, fleet.ids)[0]}, key
        used[engines.pop()] += 1
        for turn in range(1, 4):
            # the whole previous turn was warm, not just the shared system prompt
            assert cached_tokens(answers[key][turn][1]) == warm_after(answers[key][turn - 1][1])
    assert set(used) == set(fleet.ids)
    assert metric(metrics, "warmroute_gateway_routing_decisions_total", reason="keyed") == 120
    total_cached = sum(
        metric(metrics, "warmroute_gateway_cached_tokens_total", engine=e) for e in fleet.ids
    )
    assert total_cached == sum(cached_tokens(a) for k in keys for _, a in answers[k])


def test_keyless_requests_spread_despite_a_shared_system_prompt_and_repeats_hit(
    fleet: Fleet,
) -> None:
    """Must show 6."""
    with gateway_over(fleet.endpoints()) as (url, _), httpx.Client(timeout=60) as client:
        keyless_spread_and_repeats(client, url, fleet)
        metrics = client.get(url + "/metrics").text
    assert metric(metrics, "warmroute_gateway_routing_decisions_total",
                  reason="keyless-affinity") == 33


def keyless_spread_and_repeats(client: httpx.Client, url: str, fleet: Fleet) -> None:
    """30 keyless openings sharing the system prompt spread (≤ 1.5x the average per engine);
    an exact repeat goes where its prompt is cached and hits all but its last block."""
    served: Counter[str] = Counter()
    for i in range(30):
        body = chat_body(opening(f"Keyless question {i}: how do routers pick engines?"))
        response = client.post(url + "/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        served[response.headers["x-warmroute-engine"]] += 1
    assert set(served) == set(fleet.ids)
    assert max(served.values()) <= 1.5 * 30 / len(fleet.ids), served

    unique = [{"role": "user", "content": "A prompt seen nowhere else. " * 30}]
    repeats = [client.post(url + "/v1/chat/completions", json=chat_body(unique))
               for _ in range(3)]
    assert len({r.headers["x-warmroute-engine"] for r in repeats}) == 1
    first, *later = (r.json() for r in repeats)
    assert cached_tokens(first) == 0
    for answer in later:  # every full block but the one holding the last prompt token
        assert cached_tokens(answer) == BLOCK * ((answer["usage"]["prompt_tokens"] - 1) // BLOCK)
