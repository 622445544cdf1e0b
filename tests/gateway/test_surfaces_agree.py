"""Issue 14, Must show 1: the surfaces agree. Chat Completions (JSON and SSE), Responses (JSON and
SSE) and gRPC (unary and stream) meter an answer the same way however it ends — finished, cut
off by its client after a delta, cut off right after the role chunk — price it by the model the
engine served, refuse a non-boolean `stream` with a 400, and pass an engine's 401, 404, 422 and
429 on with their meaning. In-process, over scripted engines, on a real SQLite ledger.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from xai_sdk import AsyncClient
from xai_sdk.chat import user

from tests.gateway.inprocess import InProcess, in_process_gateway, until
from tests.gateway.scripted import ScriptedFleet
from tests.procs import free_port
from warmroute.gateway.policies import preference
from warmroute.pricing import ModelPrice
from warmroute.store.ledger import SqlUsage

SERVED = "scripted-model"  # what the engines say they served
ASKED = "client-alias"  # what the clients name
PRICE = ModelPrice(prompt_text_token_price=30_000, cached_prompt_token_price=7_500,
                   completion_text_token_price=150_000)
KEY = "agree"
CHAT = {"model": ASKED, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
RESPONSES = {"model": ASKED, "input": "hi", "max_output_tokens": 50, "prompt_cache_key": KEY}


def cost(prompt: int, cached: int, completion: int) -> int:
    return (prompt - cached) * 30_000 + cached * 7_500 + completion * 150_000


def rows_of(gw: InProcess) -> list[tuple[str, str, int, int, int, int]]:
    return [(r.surface, r.model, r.prompt_tokens, r.cached_tokens, r.completion_tokens,
             r.cost_in_usd_ticks) for r in gw.ledger()]


def engines_holding(after: int) -> tuple[ScriptedFleet, str, asyncio.Event]:
    """Engines whose answer to KEY stops after `after` pieces until released."""
    fleet = ScriptedFleet("e1", "e2")
    home = preference(KEY, fleet.ids)[0]
    fleet[home].pieces = ["one", " two", " three"]
    fleet[home].hold, fleet[home].hold_after = asyncio.Event(), after
    return fleet, home, fleet[home].hold


def event_count(raw: bytes) -> int:
    return len([block for block in raw.split(b"\n\n") if block.strip()])


async def leave_after(gw: InProcess, path: str, body: dict[str, Any], events: int) -> None:
    """A streaming client that reads `events` SSE events, then goes away."""
    async with gw.call(body, KEY, path=path) as call:
        await call.started()
        seen = b""
        while event_count(seen) < events:
            seen += await call.part() or b""
    await until(lambda: len(gw.ledger()) == 1, "the cut-off stream's ledger row")


@pytest.mark.parametrize(("path", "body", "surface"), [
    ("/v1/chat/completions", {**CHAT, "stream": True}, "chat.completions"),
    ("/v1/responses", {**RESPONSES, "stream": True}, "responses"),
])
async def test_a_stream_cut_after_its_first_delta_is_billed_what_the_engine_made(
    tmp_path: Path, path: str, body: dict[str, Any], surface: str,
) -> None:
    fleet, _, _ = engines_holding(after=1)
    async with in_process_gateway(fleet, tmp_path, prices={SERVED: PRICE}) as gw:
        # Chat: role chunk, "one"; Responses: created, in_progress, output items, "one"
        await leave_after(gw, path, body, 2 if surface == "chat.completions" else 5)
        rows = rows_of(gw)
    assert rows == [(surface, SERVED, 20, 16, 3, cost(20, 16, 3))]


@pytest.mark.parametrize(("path", "body", "surface", "events"), [
    ("/v1/chat/completions", {**CHAT, "stream": True}, "chat.completions", 1),
    ("/v1/responses", {**RESPONSES, "stream": True}, "responses", 2),
])
async def test_a_stream_cut_right_after_the_role_chunk_is_billed_its_prompt(
    tmp_path: Path, path: str, body: dict[str, Any], surface: str, events: int,
) -> None:
    fleet, _, _ = engines_holding(after=0)
    async with in_process_gateway(fleet, tmp_path, prices={SERVED: PRICE}) as gw:
        await leave_after(gw, path, body, events)
        await until(lambda: gw.fleet[preference(KEY, gw.fleet.ids)[0]].received != [],
                    "the engine to have the request")
        rows = rows_of(gw)
    # the role chunk says what the engine admitted; what its cache would reuse is not known yet
    assert rows == [(surface, SERVED, 20, 0, 0, cost(20, 0, 0))]


async def test_every_surface_records_the_model_the_engine_served(tmp_path: Path) -> None:
    port = free_port()
    fleet = ScriptedFleet("e1", "e2")
    settings = {"prices": {SERVED: PRICE}, "grpc_port": port}
    async with in_process_gateway(fleet, tmp_path, **settings) as gw:
        for path, body in (("/v1/chat/completions", CHAT),
                           ("/v1/chat/completions", {**CHAT, "stream": True}),
                           ("/v1/responses", RESPONSES),
                           ("/v1/responses", {**RESPONSES, "stream": True})):
            answer = await gw.http.post(path, json=body, headers={"x-grok-conv-id": KEY})
            assert answer.status_code == 200, answer.text
        sdk = grpc_client(port)
        chat = sdk.chat.create(model=ASKED, max_tokens=50)
        chat.append(user("hi"))
        await chat.sample()
        async for _ in chat.stream():
            pass
        rows = rows_of(gw)
    whole = cost(20, 16, 12)
    assert rows == [(s, SERVED, 20, 16, 12, whole) for s in (
        "chat.completions", "chat.completions", "responses", "responses", "grpc", "grpc")]


def grpc_client(port: int) -> AsyncClient:
    return AsyncClient(api_key="unused", api_host=f"127.0.0.1:{port}",
                       use_insecure_channel=True, metadata=(("x-grok-conv-id", KEY),),
                       timeout=30)


async def test_a_grpc_stream_its_client_cancels_is_billed_what_was_made(tmp_path: Path) -> None:
    from xai_sdk.proto import chat_pb2, chat_pb2_grpc

    port = free_port()
    fleet, _, _ = engines_holding(after=1)
    async with in_process_gateway(fleet, tmp_path, prices={SERVED: PRICE},
                                  grpc_port=port) as gw:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = chat_pb2.GetCompletionsRequest(
                model=ASKED, max_tokens=50,
                messages=[chat_pb2.Message(role=chat_pb2.ROLE_USER,
                                           content=[chat_pb2.Content(text="hi")])])
            call = chat_pb2_grpc.ChatStub(channel).GetCompletionChunk(
                request, metadata=(("x-grok-conv-id", KEY),))
            async for chunk in call:
                if any(o.delta.content for o in chunk.outputs):
                    call.cancel()  # the client leaves after the first delta
                    break
            await until(lambda: len(gw.ledger()) == 1, "the cancelled stream's row")
        rows = rows_of(gw)
    assert rows == [("grpc", SERVED, 20, 16, 3, cost(20, 16, 3))]


@pytest.mark.parametrize("flag", ["true", 1, "yes", None, {}])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
async def test_a_stream_flag_that_is_not_a_boolean_is_a_400(
    tmp_path: Path, path: str, flag: object,
) -> None:
    fleet = ScriptedFleet("e1")
    body = CHAT if path == "/v1/chat/completions" else RESPONSES
    async with in_process_gateway(fleet, tmp_path) as gw:
        answer = await gw.http.post(path, json={**body, "stream": flag})
        assert answer.status_code == 400, answer.text
        assert "stream" in answer.json()["error"]
        assert fleet["e1"].received == [] and gw.ledger() == []


ENGINE_ERRORS = [(401, grpc.StatusCode.UNAUTHENTICATED), (404, grpc.StatusCode.NOT_FOUND),
                 (422, grpc.StatusCode.INVALID_ARGUMENT),
                 (429, grpc.StatusCode.RESOURCE_EXHAUSTED)]


@pytest.mark.parametrize(("status", "code"), ENGINE_ERRORS)
async def test_an_engines_4xx_keeps_its_meaning_on_every_surface(
    tmp_path: Path, status: int, code: grpc.StatusCode,
) -> None:
    port = free_port()
    fleet = ScriptedFleet("e1")
    fleet["e1"].status, fleet["e1"].error = status, f"the engine says {status}"
    async with in_process_gateway(fleet, tmp_path, grpc_port=port) as gw:
        answers = [await gw.http.post(path, json=body, headers={"x-grok-conv-id": KEY})
                   for path, body in (("/v1/chat/completions", CHAT),
                                      ("/v1/chat/completions", {**CHAT, "stream": True}),
                                      ("/v1/responses", RESPONSES),
                                      ("/v1/responses", {**RESPONSES, "stream": True}))]
        codes = []
        for streamed in (False, True):
            chat = grpc_client(port).chat.create(model=ASKED, max_tokens=50)
            chat.append(user("hi"))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                if streamed:
                    async for _ in chat.stream():
                        pass
                else:
                    await chat.sample()
            codes.append(raised.value.code())
        assert fleet["e1"].probes >= 1 and len(fleet["e1"].received) == 6  # tried once each
        assert gw.gateway.membership.engines["e1"].healthy
    assert [a.status_code for a in answers] == [status] * 4
    assert all(f"the engine says {status}" in a.text for a in answers)
    assert codes == [code, code]


@pytest.mark.parametrize(("path", "body", "surface"), [
    ("/v1/chat/completions", {**CHAT, "stream": True}, "chat.completions"),
    ("/v1/responses", {**RESPONSES, "stream": True}, "responses"),
])
async def test_a_client_leaving_while_its_finished_answer_is_written_loses_no_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, body: dict[str, Any],
    surface: str,
) -> None:
    """A ledger that waits to write (PostgreSQL; here the SQLite one, made to wait): the
    client leaves while the finished answer's row is being written. The row is written, once,
    with the whole answer's usage: the write is not cancelled halfway (nor skipped, as a cut-off
    stream's row would be once the answer is counted as recorded)."""
    writing, wrote = asyncio.Event(), []
    original = SqlUsage.record

    async def waiting_record(self: SqlUsage, row: Any) -> None:
        writing.set()
        await asyncio.sleep(0.2)  # the client leaves meanwhile
        await original(self, row)
        wrote.append(row.id)

    monkeypatch.setattr(SqlUsage, "records_at_once", property(lambda self: False))
    monkeypatch.setattr(SqlUsage, "record", waiting_record)
    fleet = ScriptedFleet("e1", "e2")
    fleet[preference(KEY, fleet.ids)[0]].pieces = ["one", " two", " three"]
    async with in_process_gateway(fleet, tmp_path, prices={SERVED: PRICE}) as gw:
        async with gw.call(body, KEY, path=path) as call:
            await call.started()
            await asyncio.wait_for(writing.wait(), 5)
        assert len(wrote) == 1  # written before the handler ended
        rows = rows_of(gw)
    completion = len("one two three") + 1  # a token a character, and the stop
    assert rows == [(surface, SERVED, 20, 16, completion, cost(20, 16, completion))]
