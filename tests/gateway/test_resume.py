"""Issue 8 with real engines: an engine SIGKILLed mid-answer fails no request, not even a
stream already flowing.

The stream is continued on the next engine from the very tokens the client received (float32,
temperature 0), so the client reads exactly the text an uninterrupted run produces, with one
usage chunk covering the whole answer. The rest of resuming (what the next engine is asked,
the bound on resumes, many streams at once, no engine left, a JSON answer re-run, Responses
and gRPC) is tested in-process over scripted engines: `test_resume_inprocess.py`.
"""

from __future__ import annotations

import signal
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.harness import (
    MODEL,
    Fleet,
    chat_body,
    gateway_over,
    metric,
)
from warmroute.gateway.policies import preference

pytestmark = pytest.mark.slow
CHAT = "/v1/chat/completions"
BLOCK = 16
# builtin:tiny answers this with ids that canonical tokenization of their text does not give
# back (newlines one token each): a resume from the text alone would not be exact.
NON_CANONICAL = "Écris-moi un poème sur les caches"


def reference(url: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    """An uninterrupted answer from a healthy engine, asked directly."""
    answer = httpx.post(url + CHAT, json=chat_body(messages, max_tokens=max_tokens), timeout=120)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def reference_text(answer: dict[str, Any]) -> str:
    return str(answer["choices"][0]["message"]["content"])


def test_a_killed_stream_resumes_on_the_next_engine_with_the_exact_text(fleet: Fleet) -> None:
    key = "resume-exact"
    victim, successor = preference(key, fleet.ids)[:2]
    messages: list[Any] = [{"role": "user", "content": NON_CANONICAL}]
    expected = reference(fleet.url(successor), messages, max_tokens=300)
    assert expected["usage"]["completion_tokens"] == 300  # long enough for a kill mid-stream

    with gateway_over(fleet.endpoints()) as (url, gateway):
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        # Warm the victim so the first attempt's cached tokens are known: every full block of
        # the prompt but the one holding its last token.
        for _ in range(2):
            warm = sdk.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=1, temperature=0.0,
                extra_headers={"x-grok-conv-id": key},
            ).usage
        assert warm is not None and warm.prompt_tokens_details is not None
        first_cached = warm.prompt_tokens_details.cached_tokens
        assert first_cached == BLOCK * ((warm.prompt_tokens - 1) // BLOCK) > 0

        stream = sdk.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=300, temperature=0.0,
            stream=True, stream_options={"include_usage": True},
            extra_headers={"x-grok-conv-id": key},
        )
        assert stream.response.headers["x-warmroute-engine"] == victim
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 6:
                fleet.procs[victim].kill(signal.SIGKILL)
        metrics = httpx.get(url + "/metrics").text
        assert victim not in gateway.membership.healthy_ids()

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference_text(expected)
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.created for c in chunks} == {chunks[0].created}
    assert [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role] \
        == ["assistant"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices
            and c.choices[0].finish_reason] == ["length"]
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and chunks[-1].choices == []
    usage = with_usage[0].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.completion_tokens == 300
    assert usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert usage.prompt_tokens_details.cached_tokens == first_cached
    assert usage.total_tokens == usage.prompt_tokens + 300
    assert metric(metrics, "warmroute_gateway_stream_resumes_total", outcome="resumed") == 1
    assert metric(metrics, "warmroute_gateway_stream_resumes_total", outcome="failed") == 0
