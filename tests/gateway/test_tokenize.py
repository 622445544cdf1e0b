"""`POST /v1/tokenize-text` (issue 17) through a real gateway over a real engine: the served
model's tokens exactly as the engine counts them — the ids of a rendered prompt are the engine's
own prompt ids (`ChatTokenizer.render`) and as many as the prompt tokens the engine reports for
that conversation; a message's text tokenizes to the very ids it has inside the prompt; token
bytes join up to the text's UTF-8; gRPC `TokenizeText` answers the same."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from xai_sdk import Client

from tests.gateway.harness import MODEL, SYSTEM_PROMPT, Fleet, gateway_over
from tests.procs import free_port
from warmroute.engine.tokenizer import ChatTokenizer
from warmroute.gateway.tokenizers import local_tokenizer
from warmroute.types import ChatMessage

TEXTS = ("Hello world, prefix caching!", "héllo wörld — 😀 naïve café", "  spaces\n\tand tabs ")


@pytest.fixture
def gateway(fleet: Fleet, tmp_path: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    with gateway_over(fleet.endpoints()[:1], data_dir=tmp_path, grpc_port=port) as (url, _):
        yield url, f"127.0.0.1:{port}"


def tokenize(url: str, text: str, **extra: Any) -> list[dict[str, Any]]:
    answer = httpx.post(url + "/v1/tokenize-text", json={"text": text, **extra}, timeout=60)
    assert answer.status_code == 200, answer.text
    tokens: list[dict[str, Any]] = answer.json()["token_ids"]
    return tokens


def engine_tokenizer() -> ChatTokenizer:
    hf = local_tokenizer(MODEL)
    return ChatTokenizer(hf, frozenset({hf.eos_token_id}))


def test_ids_are_the_engines_prompt_ids(gateway: tuple[str, str]) -> None:
    url, _ = gateway
    chat = engine_tokenizer()
    for text in TEXTS:
        messages = [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", text)]
        rendered = chat.render_text(messages, continue_final=False)
        ids = [t["token_id"] for t in tokenize(url, rendered, model=MODEL)]
        assert ids == chat.render(messages)
        answer = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": MODEL, "max_tokens": 1,
            "messages": [{"role": m.role, "content": m.content} for m in messages]})
        assert answer.json()["usage"]["prompt_tokens"] == len(ids)
        if text == text.strip():  # whitespace at its edges may merge with the template's
            content = [t["token_id"] for t in tokenize(url, text)]  # no model: the served one
            assert any(ids[i:i + len(content)] == content for i in range(len(ids)))


def test_tokens_carry_their_text_and_bytes(gateway: tuple[str, str]) -> None:
    url, host = gateway
    sdk = Client(api_key="dev-key", api_host=host, use_insecure_channel=True, timeout=60)
    for text in TEXTS:
        tokens = tokenize(url, text, model=MODEL)
        assert set(tokens[0]) == {"token_id", "string_token", "token_bytes"}
        assert b"".join(bytes(t["token_bytes"]) for t in tokens) == text.encode()
        assert all(0 <= b < 256 for t in tokens for b in t["token_bytes"])
        over_grpc = sdk.tokenize.tokenize_text(text, model=MODEL)
        assert [(t.token_id, t.string_token, t.token_bytes) for t in over_grpc] == [
            (t["token_id"], t["string_token"], bytes(t["token_bytes"])) for t in tokens]
    ascii_tokens = tokenize(url, "Hello world", model=MODEL)
    assert "".join(t["string_token"] for t in ascii_tokens) == "Hello world"


def test_bad_requests(gateway: tuple[str, str]) -> None:
    url, _ = gateway
    unknown = httpx.post(url + "/v1/tokenize-text", json={"text": "x", "model": "no-model"})
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "Some requested entity was not found"
    missing = httpx.post(url + "/v1/tokenize-text", json={"model": MODEL})
    assert missing.status_code == 400
    assert missing.json()["error"].startswith("text:")
