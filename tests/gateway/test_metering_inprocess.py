"""Metering in-process over scripted engines, on a real SQLite store: every finished request is
one exact ledger row (key, team, model, engine, surface, tokens, cost), whether it was a JSON
answer, a stream with or without a usage chunk, a stream its client left, a resumed stream, a
Responses or a gRPC turn; the cost in each answer is its row's; `/v1/usage` adds them up and
`/v1/language-models` shows the prices."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from xai_sdk import AsyncClient
from xai_sdk.chat import user

from tests.gateway.inprocess import LedgerRow, bearer, in_process_gateway, make_keys
from tests.gateway.scripted import ScriptedFleet, sse_payloads
from tests.procs import free_port
from warmroute.gateway.policies import preference
from warmroute.pricing import ModelPrice

MODEL = "scripted-model"
PRICE = ModelPrice(prompt_text_token_price=30_000, cached_prompt_token_price=7_500,
                   completion_text_token_price=150_000)
BODY: dict[str, Any] = {"model": MODEL, "max_tokens": 50,
                        "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
KEY = "metered"


def cost(prompt: int, cached: int, completion: int) -> int:
    return (prompt - cached) * 30_000 + cached * 7_500 + completion * 150_000


# "Hello world": 20 prompt tokens (16 cached), 11 ids and an end-of-sequence token.
WHOLE = cost(20, 16, 12)


async def test_every_kind_of_answer_is_one_exact_row(tmp_path: Path) -> None:
    keys = await make_keys(tmp_path, a1={"team": "team-a"}, b1={"team": "team-b"})
    (a_secret, a_id), (b_secret, b_id) = keys["a1"], keys["b1"]
    engines = ScriptedFleet("e1", "e2", "e3")
    first, second, _ = preference(KEY, engines.ids)
    settings = {"require_api_keys": True, "prices": {MODEL: PRICE}}
    async with in_process_gateway(engines, tmp_path, **settings) as gw:
        whole = (await gw.chat(BODY, KEY, **bearer(a_secret))).json()
        streamed = sse_payloads((await gw.chat(STREAM, KEY, **bearer(a_secret))).content)
        quiet = sse_payloads((await gw.chat({**BODY, "stream": True}, KEY,
                                            **bearer(b_secret))).content)
        response = (await gw.http.post("/v1/responses", headers=bearer(b_secret), json={
            "model": MODEL, "input": "hi", "max_output_tokens": 50,
            "prompt_cache_key": KEY})).json()
        engines[first].pieces, engines[first].ending = ["Hel", "lo"], "reset"
        engines[second].pieces = ["Hel", "lo", " there"]
        resumed = sse_payloads((await gw.chat(STREAM, KEY, **bearer(a_secret))).content)
        rows = gw.ledger()
        report = (await gw.http.get("/v1/usage", params={"by": "key"},
                                    headers=bearer(a_secret))).json()
        models = (await gw.http.get("/v1/language-models", headers=bearer(a_secret))).json()
    assert [whole["usage"]["cost_in_usd_ticks"], streamed[-2]["usage"]["cost_in_usd_ticks"],
            response["usage"]["cost_in_usd_ticks"],
            resumed[-2]["usage"]["cost_in_usd_ticks"]] == [WHOLE, WHOLE, WHOLE, cost(20, 16, 12)]
    assert all("usage" not in e for e in quiet[:-1])  # not asked for, yet metered
    chat = "chat.completions"
    assert rows == [
        LedgerRow(a_id, "team-a", MODEL, first, chat, 20, 16, 12, WHOLE),
        LedgerRow(a_id, "team-a", MODEL, first, chat, 20, 16, 12, WHOLE),
        LedgerRow(b_id, "team-b", MODEL, first, chat, 20, 16, 12, WHOLE),
        LedgerRow(b_id, "team-b", MODEL, first, "responses", 20, 16, 12, WHOLE),
        # 5 tokens from the first engine, 6 and one more from the one that went on
        LedgerRow(a_id, "team-a", MODEL, second, chat, 20, 16, 5 + 7, cost(20, 16, 12)),
    ]
    assert [(m["id"], m["prompt_text_token_price"], m["cached_prompt_text_token_price"],
             m["completion_text_token_price"]) for m in models["models"]] == [
        (MODEL, 30_000, 7_500, 150_000)]
    assert report["team"] == "team-a"
    assert [(g["group"], g["requests"], g["prompt_tokens"], g["cached_tokens"],
             g["completion_tokens"], g["cost_in_usd_ticks"]) for g in report["groups"]] == [
        (a_id, 3, 60, 48, 36, 3 * WHOLE)]


async def test_a_stream_its_client_left_is_billed_for_what_was_delivered(
    tmp_path: Path,
) -> None:
    engines = ScriptedFleet("e1", "e2", "e3")
    first = preference(KEY, engines.ids)[0]
    engines[first].pieces = ["one", " two", " three"]
    engines[first].hold, engines[first].hold_after = asyncio.Event(), 1
    async with in_process_gateway(engines, tmp_path, prices={MODEL: PRICE}) as gw:
        async with gw.call(STREAM, KEY) as call:
            await call.started()
            assert sse_payloads((await call.part() or b"") + (await call.part() or b""))[-1][
                "choices"][0]["delta"] == {"content": "one"}
        rows = gw.ledger()
    team = rows[0].team  # the anonymous tenant's, whatever it is named
    assert rows == [LedgerRow(None, team, MODEL, first, "chat.completions", 20, 16, 3,
                              cost(20, 16, 3))]


async def test_a_request_no_engine_answered_leaves_no_row(tmp_path: Path) -> None:
    engines = ScriptedFleet("e1")
    engines["e1"].failure = "connect"
    async with in_process_gateway(engines, tmp_path) as gw:
        assert (await gw.chat(BODY, KEY)).status_code == 503
        assert (await gw.chat(STREAM, KEY)).status_code == 503
        assert gw.ledger() == []


async def test_a_grpc_turn_is_one_exact_row(tmp_path: Path) -> None:
    keys = await make_keys(tmp_path, g1={"team": "team-g"})
    secret, key_id = keys["g1"]
    engines = ScriptedFleet("e1", "e2")
    port = free_port()
    settings = {"require_api_keys": True, "prices": {MODEL: PRICE}, "grpc_port": port}
    async with in_process_gateway(engines, tmp_path, **settings) as gw:
        sdk = AsyncClient(api_key=secret, api_host=f"127.0.0.1:{port}",
                          use_insecure_channel=True, metadata=(("x-grok-conv-id", KEY),),
                          timeout=30)
        chat = sdk.chat.create(model=MODEL, max_tokens=50)
        chat.append(user("hi"))
        answer = await chat.sample()
        rows = gw.ledger()
    engine = preference(KEY, engines.ids)[0]
    assert answer.content == "Hello world"
    assert (answer.usage.prompt_tokens, answer.usage.cached_prompt_text_tokens,
            answer.usage.completion_tokens, answer.usage.cost_in_usd_ticks) == (20, 16, 12, WHOLE)
    assert rows == [LedgerRow(key_id, "team-g", MODEL, engine, "grpc", 20, 16, 12, WHOLE)]
