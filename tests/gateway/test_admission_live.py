"""The admission gate on the real stack: a real gateway over a real engine, real sockets, many
streams at once with a budget of one chunk, so that nearly every request waits for the first
token before it. Every stream completes and is billed; afterwards nothing waits, nothing is in
flight and no prefill is counted."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx

from tests.gateway.harness import Fleet, chat_body, gateway_over, metric, opening
from tests.gateway.inprocess import ledger

STREAMS = 6
TOKENS = 6


def stream(url: str, key: str, index: int) -> tuple[int, list[Any]]:
    body = chat_body(opening(f"Question {index}: how do caches help a router?"),
                     max_tokens=TOKENS, stream=True, stream_options={"include_usage": True})
    events: list[Any] = []
    with httpx.Client(timeout=60) as client, client.stream(
        "POST", url + "/v1/chat/completions", json=body, headers={"x-grok-conv-id": key}
    ) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
        return answer.status_code, events


def test_many_streams_through_a_closed_gate_all_complete(fleet: Fleet, tmp_path: Path) -> None:
    engine_id = fleet.ids[0]
    with gateway_over(fleet.endpoints()[:1], data_dir=tmp_path, policy="cache-aware",
                      admission_work=1.0) as (url, gateway):
        results: dict[int, tuple[int, list[Any]]] = {}

        def run(index: int) -> None:
            results[index] = stream(url, f"conversation-{index}", index)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(STREAMS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        metrics = httpx.get(url + "/metrics", timeout=10).text
        state = gateway.membership.engines[engine_id]
        after = (state.waiting, state.in_flight, state.queued)
    assert sorted(results) == list(range(STREAMS))
    for status, events in results.values():
        assert status == 200
        assert events[-1] == "[DONE]"
        usage = events[-2]["usage"]
        assert usage["completion_tokens"] == TOKENS and usage["prompt_tokens"] > 0
    assert metric(metrics, "warmroute_gateway_admission_wait_seconds_count") >= 2  # 5 seen
    assert metric(metrics, "warmroute_gateway_admission_waiting", engine=engine_id) == 0
    assert after == (0, 0, 0.0)
    rows = ledger(tmp_path / "warmroute.db")
    assert len(rows) == STREAMS
    assert all(r.completion_tokens == TOKENS and r.engine_id == engine_id for r in rows)
