"""Routing key extraction and validation; the keyless affinity digest."""

from __future__ import annotations

import pytest

from warmroute.errors import InvalidRequest
from warmroute.gateway.features import affinity_digest, request_features, routing_key

BODY = {"messages": [{"role": "user", "content": "hi"}]}


def test_the_header_wins_over_the_body_and_the_body_key_is_used_without_it() -> None:
    body = {**BODY, "prompt_cache_key": "from-body"}
    assert routing_key({"x-grok-conv-id": "from-header"}, body) == "from-header"
    assert routing_key({}, body) == "from-body"
    assert routing_key({}, BODY) is None
    assert routing_key({"x-grok-conv-id": ""}, {**BODY, "prompt_cache_key": ""}) is None


def test_a_key_of_256_characters_is_fine_and_257_is_refused() -> None:
    assert routing_key({"x-grok-conv-id": "k" * 256}, BODY) == "k" * 256
    with pytest.raises(InvalidRequest, match="at most 256"):
        routing_key({"x-grok-conv-id": "k" * 257}, BODY)
    with pytest.raises(InvalidRequest, match="prompt_cache_key must be at most 256"):
        routing_key({}, {**BODY, "prompt_cache_key": "k" * 257})


@pytest.mark.parametrize("bad", ["tab\there", "nul\x00", "bell\x07", "del\x7f", "c1\x85", "nl\n"])
def test_control_characters_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest, match="control characters"):
        routing_key({}, {**BODY, "prompt_cache_key": bad})


def test_a_non_string_body_key_is_refused_and_utf8_headers_are_read_as_utf8() -> None:
    with pytest.raises(InvalidRequest, match="must be a string"):
        routing_key({}, {**BODY, "prompt_cache_key": 42})
    latin1_view = "conversación-ü".encode().decode("latin-1")  # how ASGI servers hand it over
    assert routing_key({"x-grok-conv-id": latin1_view}, BODY) == "conversación-ü"


def test_keyless_features_carry_a_digest_of_the_opening_only() -> None:
    features = request_features({}, BODY)
    assert features.key is None and features.affinity == affinity_digest(BODY["messages"])
    assert request_features({}, {"messages": "not a list"}).affinity is None
    long_a = [{"role": "user", "content": "x" * 2000 + "a"}]
    long_b = [{"role": "user", "content": "x" * 2000 + "b"}]
    assert affinity_digest(long_a) == affinity_digest(long_b)  # bounded to the first 1 KiB
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert affinity_digest(parts) is not None
