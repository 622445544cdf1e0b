"""The Chat Completions route is served bare (ahead of FastAPI's stack) and answers exactly as
it does through FastAPI's own route, which stays registered (the OpenAPI document, and apps
without bare routes): the same answers, the same errors, the same ledger rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.gateway.inprocess import in_process_gateway
from tests.gateway.scripted import ScriptedFleet, sse_payloads, streamed_text
from warmroute.api.bare_asgi import BareRoutesApp

BODY: dict[str, Any] = {"model": "scripted-model", "max_tokens": 20,
                        "messages": [{"role": "user", "content": "hello there"}]}


async def answers(gw: Any) -> list[Any]:
    plain = await gw.chat(BODY, "conv-1")
    streamed = await gw.chat({**BODY, "stream": True}, "conv-1")
    bad = await gw.chat({**BODY, "stream": "true"}, "conv-1")
    missing = await gw.http.post("/v1/chat/completions", content=b"{}",
                                 headers={"content-type": "text/plain"})
    text = plain.json()["choices"][0]["message"]["content"]
    return [plain.status_code, plain.headers["x-warmroute-engine"], text,
            streamed.status_code, streamed_text(sse_payloads(streamed.content)),
            bad.status_code, bad.json(), missing.status_code, missing.json()]


async def test_bare_and_fastapi_routes_answer_alike(tmp_path: Path) -> None:
    results = []
    for bare in (True, False):
        data_dir = tmp_path / ("bare" if bare else "fastapi")
        async with in_process_gateway(ScriptedFleet("s1", "s2"), data_dir) as gw:
            assert isinstance(gw.app, BareRoutesApp)
            assert ("POST", "/v1/chat/completions") in gw.app.bare_routes
            if not bare:
                gw.app.bare_routes.clear()  # through FastAPI's middleware and route
            results.append((await answers(gw), gw.ledger()))
    (bare_answers, bare_rows), (fastapi_answers, fastapi_rows) = results
    assert bare_answers == fastapi_answers
    assert bare_answers[0] == 200 and bare_answers[3] == 200 and bare_answers[5] == 400
    assert bare_answers[7] == 415
    assert bare_answers[4] == bare_answers[2]  # the scripted engine answers a prompt alike
    assert len(bare_rows) == 2 and bare_rows == fastapi_rows
