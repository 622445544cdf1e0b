"""The real `openai` client against a live engine: JSON and streaming answers parse, and
`usage.prompt_tokens_details.cached_tokens` reports the prefix cache (issue 2, item 7)."""

from __future__ import annotations

import openai

from tests.procs import Proc

SYSTEM = "You are a careful assistant who answers questions about caches. " * 6


def client(proc: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0)


def test_non_streaming_reports_cached_tokens(live_engine: Proc) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Why cache?"}]
    first = client(live_engine).chat.completions.create(
        model="builtin:tiny", messages=messages, max_tokens=6, temperature=0  # type: ignore[arg-type]
    )
    second = client(live_engine).chat.completions.create(
        model="builtin:tiny", messages=messages, max_tokens=6, temperature=0  # type: ignore[arg-type]
    )
    assert first.object == "chat.completion"
    assert first.choices[0].message.role == "assistant"
    assert first.choices[0].message.content
    assert first.choices[0].finish_reason in ("stop", "length")
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached is not None and 0 < cached < second.usage.prompt_tokens
    assert second.choices[0].message.content == first.choices[0].message.content


def test_streaming_parses_with_usage(live_engine: Proc) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Stream it."}]
    client(live_engine).chat.completions.create(
        model="builtin:tiny", messages=messages, max_tokens=1  # type: ignore[arg-type]
    )
    stream = client(live_engine).chat.completions.create(
        model="builtin:tiny", messages=messages, max_tokens=8, temperature=0,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.completion_tokens == 8 or chunks[-2].choices[0].finish_reason == "stop"
    assert usage.prompt_tokens_details.cached_tokens is not None
    # the same prompt was sent above: every full block but the one holding its last token
    assert usage.prompt_tokens_details.cached_tokens == 16 * ((usage.prompt_tokens - 1) // 16)
