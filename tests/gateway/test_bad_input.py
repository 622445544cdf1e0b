"""Bad input gets a 4xx in xAI's envelope, never a 500 or a hang; no healthy engine is a 503."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway.harness import chat_body, gateway_over, opening
from tests.procs import free_port
from warmroute.config import EngineEndpoint

INVALID = "Client specified an invalid argument"
LIMIT = 4096


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """A gateway whose only engine is a closed port: every routed request finds none healthy."""
    nowhere = (EngineEndpoint.of(f"http://127.0.0.1:{free_port()}", "nowhere"),)
    with gateway_over(nowhere, max_body_bytes=LIMIT) as (base, _):
        yield base


def post(url: str, **kwargs: object) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=10, **kwargs)  # type: ignore[arg-type]


def test_a_body_over_the_limit_is_413(url: str) -> None:
    big = chat_body(opening("x" * (LIMIT * 2)))
    response = post(url, json=big)
    assert response.status_code == 413
    assert response.json() == {"code": "Request entity too large",
                               "error": f"the body exceeds the limit of {LIMIT} bytes"}

    def chunked() -> Iterator[bytes]:  # no content-length: counted as it arrives
        yield json.dumps(big).encode()

    response = post(url, content=chunked(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["code"] == "Request entity too large"


def test_invalid_json_is_400(url: str) -> None:
    response = post(url, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"code", "error"} and body["code"] == INVALID
    assert body["error"].startswith("the body is not valid JSON")


@pytest.mark.parametrize(
    ("headers", "extra", "error"),
    [
        ({"x-grok-conv-id": "k" * 257}, {},
         "x-grok-conv-id must be at most 256 characters, got 257"),
        ({}, {"prompt_cache_key": "k" * 300},
         "prompt_cache_key must be at most 256 characters, got 300"),
        ({"x-grok-conv-id": "tab\tinside"}, {},
         "x-grok-conv-id must not contain control characters"),
        ({}, {"prompt_cache_key": "bell\x07"},
         "prompt_cache_key must not contain control characters"),
    ],
)
def test_a_bad_routing_key_is_400(
    url: str, headers: dict[str, str], extra: dict[str, Any], error: str
) -> None:
    response = post(url, json=chat_body(opening("hi"), **extra), headers=headers)
    assert response.status_code == 400
    assert response.json() == {"code": INVALID, "error": error}


def test_no_healthy_engine_is_503(url: str) -> None:
    response = post(url, json=chat_body(opening("hi")), headers={"x-grok-conv-id": "c"})
    assert response.status_code == 503
    assert response.json() == {"code": "The service is currently unavailable",
                               "error": "no healthy engine is available"}
    health = httpx.get(url + "/health", timeout=10)
    assert health.status_code == 503
    assert health.json() == {"status": "unavailable", "healthy_engines": 0}


def test_an_engine_that_dies_after_admission_is_503_not_500() -> None:
    port = free_port()
    endpoint = (EngineEndpoint.of(f"http://127.0.0.1:{port}", "gone"),)
    with gateway_over(endpoint, probe_interval_s=60) as (base, gateway):
        gateway.membership.probe_succeeded("gone", gateway.membership.clock(), None)  # stale view
        response = post(base, json=chat_body(opening("hi")))
        assert response.status_code == 503
        assert response.json()["error"].startswith("no engine could answer: gone: ConnectError")
        assert gateway.membership.healthy_ids() == []
