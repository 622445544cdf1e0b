"""Compaction (issue 17) through a real gateway over real engines, with the real clients: the
openai SDK's `client.responses.compact(...)` and xai-sdk's `chat.compact()`. The summary is the
model's, read from the conversation's warm engine (exact cached tokens); the next request that
carries the compaction is accepted and its prompt is shorter than the whole history's; an altered
or another tenant's `encrypted_content` is a 400 (gRPC INVALID_ARGUMENT). The sealing itself is
tested without a gateway: opaque, tamper-evident, bound to the tenant and the deployment."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from xai_sdk import Client
from xai_sdk.chat import system, user
from xai_sdk.proto import chat_pb2

from tests.gateway.harness import MODEL, SYSTEM_PROMPT, Fleet, gateway_over
from tests.gateway.inprocess import ledger, make_keys
from tests.procs import free_port
from warmroute.errors import InvalidRequest
from warmroute.gateway.compaction import SUMMARY_MAX_TOKENS
from warmroute.gateway.sealing import seal, unseal

BLOCK = 16
TOPIC = "The lighthouse keeper counts {n} ships, logs the tide at {m} metres, and trims the lamp."


@pytest.fixture
def gateway(fleet: Fleet, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    port = free_port()
    with gateway_over(fleet.endpoints(), data_dir=tmp_path, grpc_port=port) as (url, _):
        yield url, f"127.0.0.1:{port}", tmp_path


def long_message(turn: int) -> str:
    return " ".join(TOPIC.format(n=turn * 10 + i, m=i) for i in range(12))


def warm_after(prompt: int, completion: int) -> int:
    """Cached tokens of the next request on the engine that answered a turn."""
    return BLOCK * ((prompt + completion - 1) // BLOCK)


def openai_client(url: str, conv: str, key: str = "dev-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120,
                         default_headers={"x-grok-conv-id": conv})


def responses_history(client: openai.OpenAI, turns: int) -> tuple[list[dict[str, Any]], Any]:
    """A conversation of `turns` long user messages and the model's replies, sent whole each
    turn; the history as input items and the last turn's usage."""
    items: list[dict[str, Any]] = [
        {"role": "system", "content": f"Session of {__name__}. {SYSTEM_PROMPT}"}]
    usage = None
    for turn in range(turns):
        items.append({"role": "user", "content": long_message(turn)})
        answer = client.responses.create(model=MODEL, input=items, max_output_tokens=8,
                                         temperature=0)
        items.append({"role": "assistant", "content": answer.output_text})
        usage = answer.usage
    return items, usage


def test_openai_compact_then_continue(gateway: tuple[str, str, Path]) -> None:
    url, _, data_dir = gateway
    client = openai_client(url, "cmp-continue")
    history, last = responses_history(client, 3)
    compacted = client.responses.compact(model=MODEL, input=history)
    assert compacted.object == "response.compaction"
    [item] = compacted.output
    assert item.type == "compaction" and item.id == compacted.id and item.id.startswith("cmp_")
    assert "lighthouse" not in item.encrypted_content
    assert b"lighthouse" not in base64.urlsafe_b64decode(item.encrypted_content + "==")
    # The summarising call read the history from the conversation's warm engine.
    assert compacted.usage.input_tokens_details.cached_tokens == warm_after(
        last.input_tokens, last.output_tokens)
    assert 0 < compacted.usage.output_tokens <= SUMMARY_MAX_TOKENS
    question = {"role": "user", "content": "How many ships were counted?"}
    after = client.responses.create(model=MODEL, input=[item.model_dump(), question],
                                    max_output_tokens=4, temperature=0)
    whole = client.responses.create(model=MODEL, input=[*history, question],
                                    max_output_tokens=4, temperature=0)
    assert after.output_text is not None
    assert after.usage.input_tokens < whole.usage.input_tokens
    rows = [r for r in ledger(data_dir / "warmroute.db") if r.surface == "responses.compact"]
    assert [(r.prompt_tokens, r.cached_tokens, r.completion_tokens) for r in rows] == [(
        compacted.usage.input_tokens, compacted.usage.input_tokens_details.cached_tokens,
        compacted.usage.output_tokens)]


def test_altered_compaction_is_refused(gateway: tuple[str, str, Path]) -> None:
    url, _, _ = gateway
    client = openai_client(url, "cmp-bad")
    history, _ = responses_history(client, 1)
    item = client.responses.compact(model=MODEL, input=history).output[0].model_dump()
    content = item["encrypted_content"]
    flipped = content[:20] + ("A" if content[20] != "A" else "B") + content[21:]
    for altered in ({**item, "encrypted_content": flipped},
                    {**item, "encrypted_content": content[:-4]},
                    {**item, "id": "cmp_forged"},
                    {**item, "encrypted_content": "not base64 !"}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model=MODEL, input=[altered, {"role": "user", "content": "?"}])
        assert refused.value.status_code == 400
        body = refused.value.response.json()
        assert body["code"] == "Client specified an invalid argument"
        assert body["error"].startswith("input.0")


def test_xai_sdk_compact_then_continue(gateway: tuple[str, str, Path]) -> None:
    _, host, _ = gateway
    sdk = Client(api_key="dev-key", api_host=host, use_insecure_channel=True, timeout=120,
                 metadata=(("x-grok-conv-id", "cmp-grpc"),))
    chat = sdk.chat.create(model=MODEL, max_tokens=8, temperature=0)
    chat.append(system(f"Session of {__name__}. {SYSTEM_PROMPT}"))
    whole = sdk.chat.create(model=MODEL, max_tokens=4, temperature=0)
    whole.append(system(chat.messages[0].content[0].text))
    last = None
    for turn in range(3):
        chat.append(user(long_message(turn)))
        whole.append(user(long_message(turn)))
        last = chat.sample()
        chat.append(last)
        whole.append(last)
    assert last is not None
    compacted = chat.compact()
    assert compacted.dropped_message_count == 6
    assert compacted.id.startswith("cmp_")
    assert compacted.usage.cached_prompt_text_tokens == warm_after(
        last.usage.prompt_tokens, last.usage.completion_tokens)
    assert [m.encrypted_content for m in chat.messages] == [compacted.encrypted_content]
    chat.append(user("How many ships were counted?"))
    whole.append(user("How many ships were counted?"))
    after = chat.sample()
    assert after.usage.prompt_tokens < whole.sample().usage.prompt_tokens
    direct = sdk.chat.compact_context(MODEL, list(chat.messages))
    assert direct.dropped_message_count == 2  # the summary and the question, summarised anew
    tampered = sdk.chat.create(model=MODEL, max_tokens=4)
    tampered.append(chat_pb2.Message(role=chat_pb2.MessageRole.ROLE_USER,
                                     encrypted_content=compacted.encrypted_content[:-3] + "xyz"))
    tampered.append(user("?"))
    with pytest.raises(grpc.RpcError) as refused:
        tampered.sample()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_another_tenants_compaction_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    keys = asyncio.run(make_keys(tmp_path, a={"team": "team-a"}, b={"team": "team-b"},
                                 a2={"team": "team-a"}))
    port = free_port()
    with gateway_over(fleet.endpoints()[:1], data_dir=tmp_path, require_api_keys=True,
                      grpc_port=port) as (url, _):
        alice = openai_client(url, "cmp-tenant", keys["a"][0])
        history, _ = responses_history(alice, 1)
        item = alice.responses.compact(model=MODEL, input=history).output[0].model_dump()
        follow = [item, {"role": "user", "content": "Go on."}]
        mate = openai_client(url, "cmp-tenant", keys["a2"][0])  # same team: accepted
        assert mate.responses.create(model=MODEL, input=follow, max_output_tokens=2).usage
        with pytest.raises(openai.BadRequestError) as refused:
            openai_client(url, "cmp-tenant", keys["b"][0]).responses.create(
                model=MODEL, input=follow, max_output_tokens=2)
        assert "another tenant" in refused.value.response.json()["error"]
        bob = Client(api_key=keys["b"][0], api_host=f"127.0.0.1:{port}",
                     use_insecure_channel=True, timeout=60)
        chat = bob.chat.create(model=MODEL, max_tokens=2)
        chat.append(chat_pb2.Message(role=chat_pb2.MessageRole.ROLE_USER,
                                     encrypted_content=item["encrypted_content"]))
        chat.append(user("Go on."))
        with pytest.raises(grpc.RpcError) as foreign:
            chat.sample()
        assert foreign.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        nothing = httpx.post(url + "/v1/responses/compact", json={
            "model": MODEL, "input": [{"role": "system", "content": "Only instructions."}]},
            headers={"authorization": f"Bearer {keys['a'][0]}"})
        assert nothing.status_code == 400


def test_sealing_is_opaque_tamper_evident_and_bound() -> None:
    secret, payload = b"deployment-secret", {"summary": "the lighthouse keeper", "n": 3}
    token = seal(secret, "compaction", "team-a", payload)
    assert unseal(secret, "compaction", "team-a", token) == payload
    assert "lighthouse" not in token
    assert seal(secret, "compaction", "team-a", payload) != token  # a fresh nonce each time
    raw = bytearray(base64.urlsafe_b64decode(token + "=="))
    for index in (0, 5, 20, len(raw) - 1):  # version, nonce, ciphertext, tag
        altered = bytearray(raw)
        altered[index] ^= 1
        with pytest.raises(InvalidRequest):
            unseal(secret, "compaction", "team-a",
                   base64.urlsafe_b64encode(bytes(altered)).decode())
    for other in ((b"other-secret", "compaction", "team-a"), (secret, "other", "team-a"),
                  (secret, "compaction", "team-b")):
        with pytest.raises(InvalidRequest):
            unseal(*other, token)
