"""xAI's gRPC API through a real gateway over real engines, driven by the real `xai-sdk`
(issue 5): conversation-sticky sampling with cached tokens, streaming, deferred and stored
completions, models, auth, tokenize, the async client, and gRPC status codes for bad input."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from xai_sdk import AsyncClient, Client
from xai_sdk.chat import system, user

from tests.gateway.harness import MODEL, SYSTEM_PROMPT, Fleet, gateway_over
from tests.procs import free_port

BLOCK = 16


@pytest.fixture
def grpc_host(fleet: Fleet, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    with gateway_over(fleet.endpoints(), data_dir=tmp_path, grpc_port=port):
        yield f"127.0.0.1:{port}"


def warm_after(previous: Any) -> int:
    """The cached tokens of the turn after `previous` (its usage) on its engine: every full
    block that turn computed (its prompt and its reply but the last token, never computed)."""
    return BLOCK * ((previous.prompt_tokens + previous.completion_tokens - 1) // BLOCK)


def client(host: str, conv: str | None = None) -> Client:
    metadata = (("x-grok-conv-id", conv),) if conv else None
    return Client(api_key="dev-key", api_host=host, use_insecure_channel=True,
                  metadata=metadata, timeout=60)


def fresh_system() -> str:
    return f"Session {uuid.uuid4()}. {SYSTEM_PROMPT}"


def test_two_turns_hit_cache_on_same_engine(grpc_host: str) -> None:
    chat = client(grpc_host, "grpc-conv-1").chat.create(model=MODEL, max_tokens=8,
                                                        temperature=0)
    chat.append(system(fresh_system()))
    chat.append(user("What is a prefix cache?"))
    first = chat.sample()
    assert first.content
    assert first.usage.cached_prompt_text_tokens == 0
    assert first.finish_reason in ("REASON_MAX_LEN", "REASON_STOP")
    chat.append(first)
    chat.append(user("Why does it matter?"))
    second = chat.sample()
    assert second.usage.cached_prompt_text_tokens == warm_after(first.usage)
    assert second.usage.prompt_text_tokens == second.usage.prompt_tokens
    assert second.usage.total_tokens == (
        second.usage.prompt_tokens + second.usage.completion_tokens
    )
    assert second.debug_output.sampler_tag == first.debug_output.sampler_tag != ""


def test_stream_chunks_concatenate(grpc_host: str) -> None:
    chat = client(grpc_host, "grpc-stream").chat.create(model=MODEL, max_tokens=10)
    chat.append(system(SYSTEM_PROMPT))
    chat.append(user("Stream please."))
    pieces = []
    responses = []
    for response, chunk in chat.stream():
        pieces.append(chunk.content)
        responses.append(response)
    response = responses[-1]
    assert "".join(pieces) == response.content != ""
    assert response.usage.prompt_tokens > 0
    assert response.usage.completion_tokens > 0
    assert response.finish_reason in ("REASON_MAX_LEN", "REASON_STOP")


def test_defer_stored_and_chain(grpc_host: str) -> None:
    sdk = client(grpc_host, "grpc-stored")
    chat = sdk.chat.create(model=MODEL, max_tokens=6, temperature=0, store_messages=True)
    chat.append(system(fresh_system()))
    chat.append(user("Remember this."))
    deferred = chat.defer(interval=timedelta(milliseconds=100))
    assert deferred.content
    stored = sdk.chat.get_stored_completion(deferred.id)
    assert [s.content for s in stored] == [deferred.content]
    assert stored[0].usage.prompt_tokens == deferred.usage.prompt_tokens
    follow = sdk.chat.create(model=MODEL, max_tokens=6, temperature=0,
                             previous_response_id=deferred.id, store_messages=True)
    follow.append(user("What did I say?"))
    answer = follow.sample()
    assert answer.usage.cached_prompt_text_tokens == warm_after(deferred.usage)
    assert sdk.chat.delete_stored_completion(deferred.id) == deferred.id
    with pytest.raises(grpc.RpcError) as gone:
        sdk.chat.get_stored_completion(deferred.id)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_models_auth_tokenize(grpc_host: str) -> None:
    sdk = client(grpc_host)
    models = sdk.models.list_language_models()
    assert [m.name for m in models] == [MODEL]
    assert sdk.models.get_language_model(MODEL).name == MODEL
    info = sdk.auth.get_api_key_info()
    assert info.redacted_api_key and "dev-key" not in info.redacted_api_key
    tokens = sdk.tokenize.tokenize_text("hello cache", model=MODEL)
    assert "".join(t.string_token for t in tokens) == "hello cache"


async def test_async_client_sample_and_stream(grpc_host: str) -> None:
    sdk = AsyncClient(api_key="dev-key", api_host=grpc_host, use_insecure_channel=True,
                      metadata=(("x-grok-conv-id", "grpc-async"),), timeout=60)
    chat = sdk.chat.create(model=MODEL, max_tokens=6)
    chat.append(system(SYSTEM_PROMPT))
    chat.append(user("Async please."))
    sampled = await chat.sample()
    assert sampled.content
    pieces = []
    seen = []
    async for streamed, chunk in chat.stream():
        pieces.append(chunk.content)
        seen.append(streamed)
    streamed = seen[-1]
    assert "".join(pieces) == streamed.content
    # the same prompt was just sampled: every full block but the one of its last token
    prompt = sampled.usage.prompt_tokens
    assert streamed.usage.prompt_tokens == prompt
    assert streamed.usage.cached_prompt_text_tokens == BLOCK * ((prompt - 1) // BLOCK)


def test_status_codes(grpc_host: str) -> None:
    sdk = client(grpc_host)
    with pytest.raises(grpc.RpcError) as unknown:
        sdk.chat.get_stored_completion("no-such-response")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    chat = sdk.chat.create(model=MODEL, previous_response_id="no-such-response")
    chat.append(user("hi"))
    with pytest.raises(grpc.RpcError) as missing:
        chat.sample()
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    bad = sdk.chat.create(model=MODEL, temperature=5.0)
    bad.append(user("hi"))
    with pytest.raises(grpc.RpcError) as invalid:
        bad.sample()
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as long_key:
        chat = client(grpc_host, "k" * 300).chat.create(model=MODEL)
        chat.append(user("hi"))
        chat.sample()
    assert long_key.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as unimplemented:
        sdk.image.sample("a cat", model=MODEL)
    assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED
