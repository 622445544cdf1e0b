"""REST deferred completions (issue 17): `deferred: true` on `POST /v1/chat/completions`, then
`GET /v1/chat/deferred-completion/{request_id}`: 202 while it runs, 200 with the completion and
its usage (priced, in the ledger), 404 for an unknown id and for another tenant's; a failed one
answers as the engine did. Through a real gateway with keys required over a real engine; the
runs are gRPC's too (read there, a REST one is refused)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from xai_sdk.proto import chat_pb2_grpc, deferred_pb2

from tests.gateway.harness import Fleet, chat_body, gateway_over, opening
from tests.gateway.inprocess import ledger, make_keys
from tests.procs import free_port

POLL = "/v1/chat/deferred-completion/"


@dataclass
class Deferring:
    url: str
    grpc_host: str
    data_dir: Path
    keys: dict[str, str]

    def post(self, who: str, body: dict[str, object]) -> httpx.Response:
        return httpx.post(self.url + "/v1/chat/completions", json=body, timeout=60,
                          headers={"authorization": f"Bearer {self.keys[who]}"})

    def poll(self, who: str, request_id: str) -> httpx.Response:
        return httpx.get(self.url + POLL + request_id, timeout=60,
                         headers={"authorization": f"Bearer {self.keys[who]}"})

    def wait(self, who: str, request_id: str, timeout: float = 120) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while (answer := self.poll(who, request_id)).status_code == 202:
            assert time.monotonic() < deadline, "the deferred completion never finished"
            time.sleep(0.05)
        return answer


@pytest.fixture
def deferring(fleet: Fleet, tmp_path: Path) -> Iterator[Deferring]:
    made = asyncio.run(make_keys(tmp_path, a={"team": "team-a"}, b={"team": "team-b"}))
    port = free_port()
    with gateway_over(fleet.endpoints()[:1], data_dir=tmp_path, require_api_keys=True,
                      grpc_port=port) as (url, _):
        yield Deferring(url, f"127.0.0.1:{port}", tmp_path,
                        {who: secret for who, (secret, _) in made.items()})


def test_pending_then_done_with_usage(deferring: Deferring) -> None:
    started = deferring.post("a", chat_body(opening("Tell me a long story."), max_tokens=300,
                                            deferred=True, temperature=1.0))
    assert started.status_code == 200
    request_id = started.json()["request_id"]
    assert set(started.json()) == {"request_id"}
    pending = deferring.poll("a", request_id)
    assert pending.status_code == 202
    done = deferring.wait("a", request_id)
    assert done.status_code == 200
    answer = done.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"]
    usage = answer["usage"]
    assert usage["completion_tokens"] > 0 and usage["cost_in_usd_ticks"] > 0
    rows = [r for r in ledger(deferring.data_dir / "warmroute.db") if r.team == "team-a"]
    assert [(r.surface, r.prompt_tokens, r.completion_tokens, r.cost_in_usd_ticks)
            for r in rows] == [("chat.completions", usage["prompt_tokens"],
                                usage["completion_tokens"], usage["cost_in_usd_ticks"])]
    assert deferring.poll("a", request_id).json() == answer  # read again: the same answer


def test_unknown_and_foreign_ids_are_404(deferring: Deferring) -> None:
    started = deferring.post("a", chat_body(opening("Mine."), deferred=True))
    request_id = started.json()["request_id"]
    assert deferring.wait("a", request_id).status_code == 200
    foreign = deferring.poll("b", request_id)
    assert foreign.status_code == 404
    assert foreign.json()["code"] == "Some requested entity was not found"
    assert deferring.poll("a", "no-such-request").status_code == 404
    anonymous = httpx.get(deferring.url + POLL + request_id, timeout=30)
    assert anonymous.status_code == 401


def test_bad_requests_and_failures(deferring: Deferring) -> None:
    streamed = deferring.post("a", chat_body(opening("x"), deferred=True, stream=True))
    assert streamed.status_code == 400
    wrong_type = deferring.post("a", chat_body(opening("x"), deferred="yes"))
    assert wrong_type.status_code == 400
    assert wrong_type.json()["error"] == "deferred must be true or false"
    not_deferred = deferring.post("a", chat_body(opening("x"), deferred=False))
    assert not_deferred.status_code == 200 and "choices" in not_deferred.json()
    failing = deferring.post("a", {**chat_body(opening("x"), deferred=True), "model": "nope"})
    failed = deferring.wait("a", failing.json()["request_id"])
    assert failed.status_code == 404
    assert failed.json() == {"code": "Some requested entity was not found",
                             "error": "The model 'nope' does not exist"}


def test_grpc_reads_only_its_own(deferring: Deferring) -> None:
    started = deferring.post("a", chat_body(opening("Over REST."), deferred=True))
    request_id = started.json()["request_id"]
    assert deferring.wait("a", request_id).status_code == 200
    with grpc.insecure_channel(deferring.grpc_host) as channel:
        stub = chat_pb2_grpc.ChatStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetDeferredCompletion(deferred_pb2.GetDeferredRequest(request_id=request_id),
                                       metadata=(("authorization",
                                                  f"Bearer {deferring.keys['a']}"),))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
