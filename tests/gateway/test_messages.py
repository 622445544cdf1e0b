"""Anthropic's Messages API (`POST /v1/messages`, issue 17) through a real gateway over real
engines, driven by the real `anthropic` SDK: a two-turn conversation keyed by `x-grok-conv-id`
reads its first turn from the same engine's cache (`usage.cache_read_input_tokens`, exact),
streamed and not; bad requests get Anthropic's error shape and status."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.gateway.harness import MODEL, SYSTEM_PROMPT, Fleet, gateway_over
from tests.gateway.inprocess import ledger, make_keys

BLOCK = 16
GREEDY = {"temperature": 0}  # the SDK no longer names sampling fields; xAI's API takes them


@pytest.fixture
def gateway(fleet: Fleet, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with gateway_over(fleet.endpoints(), data_dir=tmp_path) as (url, _):
        yield url, tmp_path


def client(url: str, conv: str | None = None, key: str = "dev-key") -> anthropic.Anthropic:
    headers = {"x-grok-conv-id": conv} if conv else None
    return anthropic.Anthropic(api_key=key, base_url=url, default_headers=headers,
                               max_retries=0, timeout=60)


def prompt_tokens(usage: Any) -> int:
    """Anthropic's split: uncached input plus cache reads is the whole prompt."""
    return int(usage.input_tokens + usage.cache_read_input_tokens)


def warm_after(usage: Any) -> int:
    """Cached tokens of the next turn on the same engine: every full block the previous turn
    computed (its prompt and its reply but the last token, which is never computed)."""
    return BLOCK * ((prompt_tokens(usage) + usage.output_tokens - 1) // BLOCK)


def opening(question: str) -> tuple[str, list[dict[str, Any]]]:
    system = f"Session {uuid.uuid4()}. {SYSTEM_PROMPT}"
    return system, [{"role": "user", "content": question}]


def test_two_turns_read_the_first_from_cache(gateway: tuple[str, Path]) -> None:
    url, data_dir = gateway
    sdk = client(url, f"msg-{uuid.uuid4()}")
    system, messages = opening("What is a prefix cache?")
    raw = sdk.messages.with_raw_response.create(model=MODEL, max_tokens=8, extra_body=GREEDY,
                                                system=system, messages=messages)
    first = raw.parse()
    assert first.type == "message" and first.role == "assistant"
    assert first.stop_reason in ("end_turn", "max_tokens")
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation_input_tokens == 0
    messages += [{"role": "assistant", "content": first.content[0].text},
                 {"role": "user", "content": [
                     {"type": "text", "text": "Why does it matter?",
                      "cache_control": {"type": "ephemeral"}}]}]
    raw2 = sdk.messages.with_raw_response.create(model=MODEL, max_tokens=8, extra_body=GREEDY,
                                                 system=[{"type": "text", "text": system}],
                                                 messages=messages)
    second = raw2.parse()
    assert raw2.headers["x-warmroute-engine"] == raw.headers["x-warmroute-engine"]
    assert second.usage.cache_read_input_tokens == warm_after(first.usage) > 0
    assert second.usage.input_tokens == prompt_tokens(second.usage) - warm_after(first.usage)
    rows = [r for r in ledger(data_dir / "warmroute.db") if r.surface == "messages"]
    assert [(r.prompt_tokens, r.cached_tokens, r.completion_tokens) for r in rows] == [
        (prompt_tokens(u), u.cache_read_input_tokens, u.output_tokens)
        for u in (first.usage, second.usage)
    ]


def test_streamed_turns_read_the_first_from_cache(gateway: tuple[str, Path]) -> None:
    url, _ = gateway
    sdk = client(url, f"msg-stream-{uuid.uuid4()}")
    system, messages = opening("Stream an answer about routers.")
    with sdk.messages.stream(model=MODEL, max_tokens=10, extra_body=GREEDY, system=system,
                             messages=messages, cache_control={"type": "ephemeral"}) as stream:
        text = "".join(stream.text_stream)
        first = stream.get_final_message()
        engine = stream.response.headers["x-warmroute-engine"]
    assert text == first.content[0].text != ""
    assert first.usage.output_tokens > 0 and first.usage.input_tokens > 0
    messages += [{"role": "assistant", "content": text},
                 {"role": "user", "content": "And then?"}]
    events = []
    with sdk.messages.stream(model=MODEL, max_tokens=6, extra_body=GREEDY, system=system,
                             messages=messages) as stream:
        for event in stream:
            events.append(event.type)
        second = stream.get_final_message()
        assert stream.response.headers["x-warmroute-engine"] == engine
    # The reply comes back as text: where builtin:tiny's ids for it were not the canonical
    # tokenization of that text, its last block is not the same block again (what the
    # engine's `continue_token_ids` is for); the whole prompt's blocks always are.
    cached = second.usage.cache_read_input_tokens
    assert cached % BLOCK == 0
    assert BLOCK * (prompt_tokens(first.usage) // BLOCK) <= cached <= warm_after(first.usage)
    assert cached > 0
    raw_order = [e for e in events if e not in ("text",)]
    assert raw_order[:2] == ["message_start", "content_block_start"]
    assert raw_order[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_invalid_requests_get_anthropic_errors(gateway: tuple[str, Path]) -> None:
    url, _ = gateway
    sdk = client(url)
    with pytest.raises(anthropic.BadRequestError) as bad:
        sdk.messages.create(model=MODEL, max_tokens=0,
                            messages=[{"role": "user", "content": "hi"}])
    assert bad.value.status_code == 400
    assert bad.value.body == {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "max_tokens: Input should be greater than or equal to 1"}}
    with pytest.raises(anthropic.BadRequestError) as image:
        sdk.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "http://127.0.0.1/x.png"}}]}])
    assert image.value.body["error"] == {
        "type": "invalid_request_error",
        "message": "messages.0.0: only text blocks are supported, got 'image'"}
    with pytest.raises(anthropic.NotFoundError) as unknown:
        sdk.messages.create(model="no-such-model", max_tokens=4,
                            messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.body["type"] == "error"
    assert unknown.value.body["error"]["type"] == "not_found_error"
    answer = httpx.post(url + "/v1/messages", content=b"{not json",
                        headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_keys_are_checked_in_anthropic_shape(fleet: Fleet, tmp_path: Path) -> None:
    secret, _ = asyncio.run(make_keys(tmp_path, ant={"team": "team-ant"}))["ant"]
    with gateway_over(fleet.endpoints()[:1], data_dir=tmp_path, require_api_keys=True) as (
            url, _):
        with pytest.raises(anthropic.AuthenticationError) as wrong:
            client(url, key="xai-wr-not-a-key-of-ours").messages.create(
                model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
        assert wrong.value.status_code == 401
        assert wrong.value.body["error"]["type"] == "authentication_error"
        answer = client(url, key=secret).messages.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
        assert answer.usage.output_tokens > 0
        bearer = httpx.post(url + "/v1/messages", json={
            "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {secret}"}, timeout=60)
        assert bearer.status_code == 200


def test_final_assistant_message_is_a_prefill(gateway: tuple[str, Path]) -> None:
    """Anthropic's prefill: the answer continues a final assistant message, so the prompt ends
    inside that message (no end of turn, no new assistant header)."""
    url, _ = gateway
    sdk = client(url)
    messages: list[Any] = [{"role": "user", "content": "Count to five."},
                           {"role": "assistant", "content": "One, two,"}]
    prefilled = sdk.messages.create(model=MODEL, max_tokens=4, messages=messages,
                                    extra_body=GREEDY)
    closed = sdk.messages.create(model=MODEL, max_tokens=4, extra_body=GREEDY,
                                 messages=[*messages, {"role": "user", "content": "."}])
    tail = httpx.post(url + "/v1/tokenize-text", json={
        "model": MODEL, "text": "<|im_end|>\n<|im_start|>user\n.<|im_end|>\n"
                                "<|im_start|>assistant\n"}).json()["token_ids"]
    assert prompt_tokens(closed.usage) - prompt_tokens(prefilled.usage) == len(tail)
    assert prefilled.usage.output_tokens > 0
    streamed_as_text = httpx.post(url + "/v1/messages", json={
        "model": MODEL, "max_tokens": 2, "stream": "true", "messages": messages})
    assert streamed_as_text.status_code == 400
