"""The hot routes — Chat Completions, creating a response, Messages — are served bare (ahead of
FastAPI's stack) and answer exactly as they do through FastAPI's own routes, which stay
registered (the OpenAPI document, and apps without bare routes): the same answers, the same
errors, the same ledger rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.gateway.inprocess import in_process_gateway
from tests.gateway.scripted import ScriptedFleet, sse_payloads, streamed_text
from warmroute.api.bare_asgi import BareRoutesApp

BODY: dict[str, Any] = {"model": "scripted-model", "max_tokens": 20,
                        "messages": [{"role": "user", "content": "hello there"}]}
RESPONSE: dict[str, Any] = {"model": "scripted-model", "max_output_tokens": 20,
                            "input": "hello there", "store": False}
BARE = {("POST", "/v1/chat/completions"), ("POST", "/v1/responses"), ("POST", "/v1/messages")}


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


def named_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event of a Responses or Messages stream."""
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            name, data = block.split("\n", 1)
            out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


async def surface_answers(gw: Any) -> list[Any]:
    """What the Responses and Messages routes answer, less their fresh ids and times."""
    headers = {"x-grok-conv-id": "conv-2"}
    plain = await gw.http.post("/v1/responses", json=RESPONSE, headers=headers)
    streamed = await gw.http.post("/v1/responses", json={**RESPONSE, "stream": True},
                                  headers=headers)
    bad = await gw.http.post("/v1/responses", json={**RESPONSE, "input": 5}, headers=headers)
    message = {"model": "scripted-model", "max_tokens": 20, "stream": True,
               "messages": [{"role": "user", "content": "hello there"}]}
    messages = await gw.http.post("/v1/messages", json=message, headers=headers)
    bad_message = await gw.http.post("/v1/messages", json={**message, "max_tokens": "x"})
    events = named_events(streamed.content)
    completed = events[-1][1]["response"]
    message_events = named_events(messages.content)
    return [
        plain.status_code, plain.headers["x-warmroute-engine"],
        plain.json()["output"][0]["content"][0]["text"], plain.json()["usage"],
        streamed.status_code, streamed.headers["content-type"],
        streamed.headers["x-warmroute-engine"], [name for name, _ in events],
        [e["sequence_number"] for _, e in events],
        completed["output"][0]["content"][0]["text"], completed["usage"],
        bad.status_code, bad.json(),
        messages.status_code, [name for name, _ in message_events],
        "".join(e["delta"].get("text", "") for name, e in message_events
                if name == "content_block_delta"),
        message_events[-2][1]["usage"],
        bad_message.status_code, bad_message.json(),
    ]


async def test_bare_and_fastapi_routes_answer_alike(tmp_path: Path) -> None:
    results = []
    for bare in (True, False):
        data_dir = tmp_path / ("bare" if bare else "fastapi")
        async with in_process_gateway(ScriptedFleet("s1", "s2"), data_dir) as gw:
            assert isinstance(gw.app, BareRoutesApp)
            assert set(gw.app.bare_routes) == BARE
            if not bare:
                gw.app.bare_routes.clear()  # through FastAPI's middleware and route
            results.append((await answers(gw), await surface_answers(gw), gw.ledger()))
    (bare_answers, bare_surfaces, bare_rows), (fastapi_answers, fastapi_surfaces,
                                               fastapi_rows) = results
    assert bare_answers == fastapi_answers
    assert bare_answers[0] == 200 and bare_answers[3] == 200 and bare_answers[5] == 400
    assert bare_answers[7] == 415
    assert bare_answers[4] == bare_answers[2]  # the scripted engine answers a prompt alike
    assert bare_surfaces == fastapi_surfaces
    assert bare_surfaces[0] == 200 and bare_surfaces[4] == 200
    assert bare_surfaces[5] == "text/event-stream; charset=utf-8"  # as Starlette wrote it
    assert bare_surfaces[7][0] == "response.created"
    assert bare_surfaces[7][-1] == "response.completed"
    assert bare_surfaces[8] == list(range(len(bare_surfaces[7])))
    assert bare_surfaces[9] == bare_surfaces[2]  # streamed and whole, the same text
    assert bare_surfaces[11] == 400
    assert bare_surfaces[12]["code"] == "Client specified an invalid argument"
    assert bare_surfaces[13] == 200
    assert bare_surfaces[14][0] == "message_start" and bare_surfaces[14][-1] == "message_stop"
    assert bare_surfaces[15] == bare_surfaces[2]
    assert bare_surfaces[17] == 400 and bare_surfaces[18]["type"] == "error"
    assert [r.surface for r in bare_rows] == [
        "chat.completions", "chat.completions", "responses", "responses", "messages"]
    assert bare_rows == fastapi_rows
