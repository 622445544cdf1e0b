"""Usage read from JSON answers and from SSE streams split at arbitrary byte boundaries."""

from __future__ import annotations

import json

from warmroute.gateway.usage import SseUsageTap, usage_of_json
from warmroute.types import Usage

USAGE = {
    "prompt_tokens": 40, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 32}
}


def test_usage_of_a_json_answer() -> None:
    assert usage_of_json(json.dumps({"usage": USAGE}).encode()) == Usage(40, 3, 32)
    assert usage_of_json(b'{"usage": {"prompt_tokens": 5}}') == Usage(5, 0, 0)
    assert usage_of_json(b"not json") is None
    assert usage_of_json(b'{"code": "x", "error": "y"}') is None


def test_the_tap_finds_the_usage_chunk_however_the_stream_is_cut() -> None:
    stream = (
        b'data: {"choices":[{"index":0,"delta":{"content":"usage"}}]}\n\n'
        + b'data: {"choices":[],"usage":' + json.dumps(USAGE).encode() + b"}\n\n"
        + b"data: [DONE]\n\n"
    )
    for size in (1, 7, 64, len(stream)):
        tap = SseUsageTap()
        for start in range(0, len(stream), size):
            tap.feed(stream[start : start + size])
        assert tap.usage() == Usage(40, 3, 32)
    tap = SseUsageTap()
    tap.feed(b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n')
    assert tap.usage() is None
