"""API keys, tenant cache isolation and rate limits shared through Redis (issue 6), through a
real gateway with keys required, over real engines, with the real clients; the ledger across a
SIGKILL of the gateway process. Cost on every surface, exact ledger rows and local rate limits
are tested in-process over scripted engines (`test_metering_inprocess.py`,
`test_ratelimit_inprocess.py`)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import empty_pb2
from xai_sdk import Client
from xai_sdk.chat import user
from xai_sdk.proto import auth_pb2_grpc

from tests.gateway.harness import MODEL, SYSTEM_PROMPT, Fleet, chat_body, gateway_over, wait_for
from tests.gateway.inprocess import ledger
from tests.procs import free_port, start
from warmroute.gateway.auth import create_key
from warmroute.pricing import ModelPrice
from warmroute.store import open_store

BLOCK = 16
PRICE = ModelPrice(prompt_text_token_price=30_000, cached_prompt_token_price=7_500,
                   completion_text_token_price=150_000)


@dataclass
class Tenancy:
    url: str
    grpc_host: str
    data_dir: Path
    keys: dict[str, str]

    def headers(self, who: str, **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[who]}", **extra}


async def make_keys(data_dir: Path, **specs: dict[str, Any]) -> dict[str, str]:
    store = await open_store(str(data_dir / "warmroute.db"))
    try:
        made = {}
        for who, spec in specs.items():
            secret, _ = await create_key(store, name=who, **spec)
            made[who] = secret
        return made
    finally:
        await store.close()


async def revoke_all(data_dir: Path, name: str) -> None:
    store = await open_store(str(data_dir / "warmroute.db"))
    try:
        for key in await store.api_keys.list_keys():
            if key.name == name:
                await store.api_keys.revoke(key.key_id, time.time())
    finally:
        await store.close()


@pytest.fixture
def tenancy(fleet: Fleet, tmp_path: Path) -> Iterator[Tenancy]:
    keys = asyncio.run(make_keys(
        tmp_path, a1={"team": "team-a"}, a2={"team": "team-a"}, b1={"team": "team-b"},
        gone={"team": "team-a"},
    ))
    asyncio.run(revoke_all(tmp_path, "gone"))
    port = free_port()
    one_engine = fleet.endpoints()[:1]  # every request meets the same cache
    with gateway_over(one_engine, data_dir=tmp_path, grpc_port=port, require_api_keys=True,
                      prices={MODEL: PRICE}) as (url, _):
        yield Tenancy(url, f"127.0.0.1:{port}", tmp_path, keys)


def post(t: Tenancy, path: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    return httpx.post(t.url + path, json=body, headers=headers, timeout=60)


HTTP_SURFACES = [
    ("/v1/chat/completions", chat_body([{"role": "user", "content": "hi"}])),
    ("/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 2}),
]


@pytest.mark.parametrize(("path", "body"), HTTP_SURFACES, ids=["chat", "responses"])
def test_http_surfaces_refuse_missing_wrong_and_revoked_keys(
    tenancy: Tenancy, path: str, body: dict[str, Any]
) -> None:
    missing = post(tenancy, path, body, {})
    wrong = post(tenancy, path, body, {"authorization": "Bearer xai-wr-not-a-key-at-all-000"})
    revoked = post(tenancy, path, body, tenancy.headers("gone"))
    good = post(tenancy, path, body, tenancy.headers("a1"))
    assert (missing.status_code, wrong.status_code, revoked.status_code) == (401, 400, 403)
    for refused in (missing, wrong, revoked):
        assert set(refused.json()) == {"code", "error"}
    assert "xai-wr-not-a-key-at-all-000" not in wrong.text
    assert good.status_code == 200


def test_grpc_refuses_missing_wrong_and_revoked_keys(tenancy: Tenancy) -> None:
    codes = []
    for key in ("wrong-key-123456789", tenancy.keys["gone"]):
        chat = Client(api_key=key, api_host=tenancy.grpc_host,
                      use_insecure_channel=True).chat.create(model=MODEL, max_tokens=2)
        chat.append(user("hi"))
        with pytest.raises(grpc.RpcError) as refused:
            chat.sample()
        codes.append(refused.value.code())
    channel = grpc.insecure_channel(tenancy.grpc_host)  # no authorization metadata at all
    with pytest.raises(grpc.RpcError) as missing:
        auth_pb2_grpc.AuthStub(channel).get_api_key_info(empty_pb2.Empty())
    channel.close()
    assert codes == [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED]
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info = Client(api_key=tenancy.keys["a1"], api_host=tenancy.grpc_host,
                  use_insecure_channel=True).auth.get_api_key_info()
    assert info.team_id == "team-a" and info.name == "a1"


def test_teams_do_not_share_cache_but_keys_of_a_team_do(tenancy: Tenancy) -> None:
    prompt = [{"role": "system", "content": f"{uuid.uuid4()} {SYSTEM_PROMPT}"},
              {"role": "user", "content": "Same long prompt for everyone."}]

    def usage(who: str) -> tuple[int, int]:
        answer = post(tenancy, "/v1/chat/completions", chat_body(prompt), tenancy.headers(who))
        assert answer.status_code == 200, answer.text
        counts = answer.json()["usage"]
        return counts["prompt_tokens"], counts["prompt_tokens_details"]["cached_tokens"]

    prompt_tokens, cached = usage("a1")
    assert cached == 0
    assert usage("b1") == (prompt_tokens, 0)  # same engine, same prompt, other team: no hit
    # another key of team A shares team A's cache: every full block but the last token's
    assert usage("a2") == (prompt_tokens, BLOCK * ((prompt_tokens - 1) // BLOCK))


def test_stored_responses_are_private_to_their_team(tenancy: Tenancy) -> None:
    made = post(tenancy, "/v1/responses", {"model": MODEL, "input": "secret plans",
                                           "max_output_tokens": 2}, tenancy.headers("a1"))
    response_id = made.json()["id"]
    b = tenancy.headers("b1")
    assert httpx.get(f"{tenancy.url}/v1/responses/{response_id}", headers=b).status_code == 404
    assert httpx.delete(f"{tenancy.url}/v1/responses/{response_id}", headers=b).status_code == 404
    chained = post(tenancy, "/v1/responses", {"model": MODEL, "input": "more",
                                              "previous_response_id": response_id}, b)
    assert chained.status_code == 404
    same_team = httpx.get(f"{tenancy.url}/v1/responses/{response_id}",
                          headers=tenancy.headers("a2"))
    assert same_team.status_code == 200


def first_refusal(send: Any, attempts: int = 7) -> tuple[int, httpx.Response]:
    """Send until refused; a minute boundary may reset the window once, hence the slack."""
    for index in range(attempts):
        answer = send(index)
        if answer.status_code != 200:
            return index, answer
    raise AssertionError("never rate limited")


@pytest.fixture
def redis_url() -> str:
    import redis

    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable at 127.0.0.1:6379: {exc}")
    return url


def test_rate_limit_holds_across_replicas_sharing_redis(
    fleet: Fleet, tmp_path: Path, redis_url: str
) -> None:
    keys = asyncio.run(make_keys(tmp_path, shared={"team": "team-r", "rpm": 2}))
    headers = {"authorization": f"Bearer {keys['shared']}"}
    body = chat_body([{"role": "user", "content": "two replicas"}])
    settings = {"data_dir": tmp_path, "require_api_keys": True, "redis_url": redis_url}
    with gateway_over(fleet.endpoints(), **settings) as (first, _), \
            gateway_over(fleet.endpoints(), **settings) as (second, _):
        replicas = [first, second]
        index, limited = first_refusal(lambda i: httpx.post(
            replicas[i % 2] + "/v1/chat/completions", json=body, headers=headers, timeout=60))
    assert index in (2, 3, 4)
    assert limited.status_code == 429 and "retry-after" in limited.headers


def stream_usage(url: str, key: str, text: str) -> dict[str, Any]:
    body = chat_body([{"role": "user", "content": text}], max_tokens=6, stream=True,
                     stream_options={"include_usage": True})
    usage: dict[str, Any] = {}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"authorization": f"Bearer {key}"}) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                event = json.loads(line[6:])
                if event.get("choices") == []:
                    usage = event["usage"]
    return usage


def cut_off_stream(url: str, key: str) -> None:
    body = chat_body([{"role": "user", "content": "talk for long"}], max_tokens=2000,
                     stream=True, temperature=1.0)
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"authorization": f"Bearer {key}"}) as answer:
        for seen, _ in enumerate(answer.iter_lines()):
            if seen > 6:
                break  # the client goes away mid-answer


@pytest.mark.slow
def test_ledger_survives_sigkill_with_every_request(fleet: Fleet, tmp_path: Path) -> None:
    keys = asyncio.run(make_keys(tmp_path, whole={"team": "t"}, partial={"team": "t"}))
    port = free_port()
    engines = [f"--engine={i}={fleet.url(i)}" for i in fleet.ids]
    args = ["gateway", *engines, "--port", str(port), "--data-dir", str(tmp_path)]
    gateway = start(args, tmp_path / "gateway.log", port)
    seen: list[dict[str, Any]] = []
    try:
        gateway.wait_healthy(timeout=60)
        for i in range(2):
            answer = httpx.post(gateway.url + "/v1/chat/completions", timeout=60,
                                json=chat_body([{"role": "user", "content": f"whole {i}"}]),
                                headers={"authorization": f"Bearer {keys['whole']}"})
            seen.append(answer.json()["usage"])
            seen.append(stream_usage(gateway.url, keys["whole"], f"streamed {i}"))
        cut_off_stream(gateway.url, keys["partial"])
        # the gateway notices the client left and writes its row
        wait_for(lambda: len(ledger(tmp_path / "warmroute.db")) == 5, 10, "the fifth row")
        gateway.kill(signal.SIGKILL)
        gateway = start(args, tmp_path / "gateway-2.log", port)
        gateway.wait_healthy(timeout=60)
        report = httpx.get(gateway.url + "/v1/usage", params={"by": "key"}, timeout=10,
                           headers={"authorization": f"Bearer {keys['whole']}"}).json()
    finally:
        gateway.kill()
    rows = {row["requests"]: row for row in report["groups"]}
    assert sorted(rows) == [1, 4]
    whole, partial = rows[4], rows[1]
    assert all(u.get("cost_in_usd_ticks", 0) > 0 for u in seen)
    assert whole["prompt_tokens"] == sum(u["prompt_tokens"] for u in seen)
    assert whole["completion_tokens"] == sum(u["completion_tokens"] for u in seen)
    assert whole["cached_tokens"] == sum(u["prompt_tokens_details"]["cached_tokens"] for u in seen)
    assert whole["cost_in_usd_ticks"] == sum(u["cost_in_usd_ticks"] for u in seen)
    assert 1 <= partial["completion_tokens"] < 2000
