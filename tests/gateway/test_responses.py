"""The Responses API through a real gateway over real engines, with the real `openai` client
(issue 4): chaining with `previous_response_id` hits the producing engine's cache (every block
the previous turn computed); streaming yields xAI's event order; stored responses round-trip and
expire. A restart over the same store, on SQLite or PostgreSQL, is tested in-process
(`test_responses_inprocess.py`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseUsage

from tests.gateway.harness import MODEL, SYSTEM_PROMPT, Fleet, gateway_over

ENGINE = "x-warmroute-engine"
BLOCK = 16


def warm_after(previous: ResponseUsage | None) -> int:
    """The cached tokens of the turn after `previous` on its engine: every full block that
    turn computed (its input and its output but the last token, never computed)."""
    assert previous is not None
    return BLOCK * ((previous.input_tokens + previous.output_tokens - 1) // BLOCK)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def gateway(fleet: Fleet, tmp_path: Path) -> Iterator[str]:
    with gateway_over(fleet.endpoints(), data_dir=tmp_path) as (url, _):
        yield url


def test_chain_hits_cache_on_same_engine(gateway: str) -> None:
    oa = client(gateway)
    fresh = f"Conversation {uuid.uuid4()}. {SYSTEM_PROMPT}"  # not cached by any earlier test
    first = oa.responses.with_raw_response.create(
        model=MODEL, instructions=fresh, input="What is a prefix cache?",
        max_output_tokens=8, temperature=0, extra_body={"prompt_cache_key": "resp-conv-1"},
    )
    one = first.parse()
    assert one.output_text
    assert one.usage is not None and one.usage.input_tokens_details.cached_tokens == 0
    assert one.prompt_cache_key == "resp-conv-1"
    second = oa.responses.with_raw_response.create(
        model=MODEL, input="And why does it matter?", previous_response_id=one.id,
        max_output_tokens=8, temperature=0, extra_body={"prompt_cache_key": "resp-conv-1"},
    )
    two = second.parse()
    assert two.previous_response_id == one.id
    assert two.usage is not None
    assert two.usage.input_tokens_details.cached_tokens == warm_after(one.usage)
    assert two.usage.input_tokens > one.usage.input_tokens + one.usage.output_tokens
    assert second.headers[ENGINE] == first.headers[ENGINE]


def test_previous_response_goes_to_its_engine_even_without_a_key(gateway: str) -> None:
    oa = client(gateway)
    engines = set()
    previous: Response | None = None
    for turn in range(3):
        raw = oa.responses.with_raw_response.create(
            model=MODEL, input=f"Turn {turn}: tell me about routing.",
            instructions=SYSTEM_PROMPT if previous is None else openai.omit,
            previous_response_id=previous.id if previous else openai.omit, max_output_tokens=6,
            temperature=0,
        )
        engines.add(raw.headers[ENGINE])
        answer = raw.parse()
        assert answer.usage is not None
        if previous is not None:
            assert answer.usage.input_tokens_details.cached_tokens == warm_after(previous.usage)
        previous = answer
    assert len(engines) == 1


def test_stream_events_in_order(gateway: str) -> None:
    stream = client(gateway).responses.create(
        model=MODEL, input="Stream a short answer.", instructions=SYSTEM_PROMPT,
        max_output_tokens=8, temperature=0, stream=True,
        extra_body={"prompt_cache_key": "resp-stream"},
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    assert final.usage is not None and final.usage.input_tokens > 0
    assert final.output_text == "".join(d.delta for d in deltas)  # type: ignore[union-attr]
    stored = client(gateway).responses.retrieve(final.id)
    assert stored.output_text == final.output_text


def test_get_delete_and_404(gateway: str) -> None:
    oa = client(gateway)
    made = oa.responses.create(model=MODEL, input="Remember me.", max_output_tokens=4)
    got = oa.responses.retrieve(made.id)
    assert got.id == made.id and got.output_text == made.output_text
    deleted = httpx.delete(f"{gateway}/v1/responses/{made.id}").json()
    assert deleted == {"id": made.id, "object": "response", "deleted": True}
    for method in ("GET", "DELETE"):
        gone = httpx.request(method, f"{gateway}/v1/responses/{made.id}")
        assert gone.status_code == 404
        assert set(gone.json()) == {"code", "error"}


def test_store_false_is_not_retrievable(gateway: str) -> None:
    made = client(gateway).responses.create(
        model=MODEL, input="Forget me.", max_output_tokens=4, store=False
    )
    assert made.store is False
    assert httpx.get(f"{gateway}/v1/responses/{made.id}").status_code == 404
    chained = httpx.post(f"{gateway}/v1/responses", json={
        "model": MODEL, "input": "again", "previous_response_id": made.id})
    assert chained.status_code == 404


BAD_BODIES: list[tuple[str, dict[str, Any], int]] = [
    ("unknown previous", {"input": "hi", "previous_response_id": "no-such-id"}, 404),
    ("unknown role", {"input": [{"role": "wizard", "content": "hi"}]}, 400),
    ("image part", {"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "http://127.0.0.1/x.png"}]}]}, 400),
    ("no input", {"model": MODEL}, 400),
    ("empty input", {"input": []}, 400),
    ("instructions with previous", {"input": "x", "instructions": "s",
                                    "previous_response_id": "abc"}, 400),
    ("max_output_tokens zero", {"input": "x", "max_output_tokens": 0}, 400),
    ("bad key", {"input": "x", "prompt_cache_key": "k" * 300}, 400),
]


@pytest.mark.parametrize(("case", "body", "status"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_input(gateway: str, case: str, body: dict[str, Any], status: int) -> None:
    answer = httpx.post(f"{gateway}/v1/responses", json=body)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"code", "error"}


def test_expired_responses_are_gone(fleet: Fleet, tmp_path: Path) -> None:
    with gateway_over(fleet.endpoints(), data_dir=tmp_path, response_ttl_s=0.5,
                      purge_interval_s=0.2) as (url, _):
        made = client(url).responses.create(model=MODEL, input="Short-lived.", max_output_tokens=2)
        assert httpx.get(f"{url}/v1/responses/{made.id}").status_code == 200
        time.sleep(1.0)
        assert httpx.get(f"{url}/v1/responses/{made.id}").status_code == 404
