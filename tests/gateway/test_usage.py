"""Usage read from JSON answers (streams: the splice, `test_resume_splice.py`)."""

from __future__ import annotations

import json

from warmroute.gateway.proxy import Relayed
from warmroute.gateway.usage import usage_of
from warmroute.types import Usage

USAGE = {
    "prompt_tokens": 40, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 32}
}


def usage_of_json(body: bytes) -> object:
    """As the proxy reads a buffered answer's usage: its JSON decoded once, then read."""
    return usage_of(Relayed("e1", 200, {}, body).data)


def test_usage_of_a_json_answer() -> None:
    assert usage_of_json(json.dumps({"usage": USAGE}).encode()) == Usage(40, 3, 32)
    assert usage_of_json(b'{"usage": {"prompt_tokens": 5}}') == Usage(5, 0, 0)
    assert usage_of_json(b"not json") is None
    assert usage_of_json(b'{"code": "x", "error": "y"}') is None
