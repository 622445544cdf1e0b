"""The engine's HTTP surface against a live `warmroute engine` on 127.0.0.1 (issue 2, 6 and 8).

Every kind of bad input gets its status and xAI's `{"code", "error"}` envelope; concurrent
streams complete with correct usage while decode steps run batched; a client that leaves
mid-stream frees its slot and blocks.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from tests.procs import Proc

CHAT = "/v1/chat/completions"
LONG_TEXT = "route the cache " * 2000  # well beyond builtin:tiny's 4,096-token context


def chat_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "builtin:tiny",
        "messages": [{"role": "user", "content": "Hello, engine."}],
        "max_tokens": 4,
        "temperature": 0,
    }
    body.update(overrides)
    return body


BAD_INPUTS: list[tuple[str, dict[str, Any], int]] = [
    ("missing messages", {"messages": None}, 400),
    ("empty messages", {"messages": []}, 400),
    ("unknown role", {"messages": [{"role": "robot", "content": "hi"}]}, 400),
    ("image content", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]}]}, 400),
    ("max_tokens zero", {"max_tokens": 0}, 400),
    ("max_tokens negative", {"max_tokens": -3}, 400),
    ("max_tokens above context", {"max_tokens": 100_000}, 400),
    ("prompt longer than context", {"messages": [{"role": "user", "content": LONG_TEXT}]}, 400),
    ("temperature out of range", {"temperature": 5}, 400),
    ("n above one", {"n": 2}, 400),
    ("continue without assistant", {"continue_final_message": True,
                                    "add_generation_prompt": False}, 400),
    ("continue with generation prompt", {"continue_final_message": True, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hel"}]}, 400),
    ("stop list too long", {"stop": ["a", "b", "c", "d", "e"]}, 400),
    ("stop string too long", {"stop": ["x" * 257]}, 400),
    ("seed beyond 64 bits", {"seed": 2**64}, 400),
    ("top_p zero", {"top_p": 0}, 400),
    ("priority on a first-come engine", {"priority": 5}, 400),
    ("priority not an integer", {"priority": "5"}, 400),
    ("unknown model", {"model": "grok-9"}, 404),
]


@pytest.mark.parametrize(
    ("case", "overrides", "status"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_status_and_envelope(
    live_engine: Proc, case: str, overrides: dict[str, Any], status: int
) -> None:
    body = chat_body(**overrides)
    if overrides.get("messages", ...) is None:
        del body["messages"]
    response = httpx.post(live_engine.url + CHAT, json=body, timeout=30)
    assert response.status_code == status, response.text
    envelope = response.json()
    assert set(envelope) == {"code", "error"}
    assert envelope["error"]


def test_invalid_json_is_400(live_engine: Proc) -> None:
    response = httpx.post(
        live_engine.url + CHAT, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "Client specified an invalid argument"


@pytest.mark.parametrize("content_type", ["text/plain", None])
def test_wrong_content_type_is_415(live_engine: Proc, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(
        live_engine.url + CHAT, content=json.dumps(chat_body()).encode(), headers=headers
    )
    assert response.status_code == 415
    assert set(response.json()) == {"code", "error"}


def test_unknown_route_is_404_envelope(live_engine: Proc) -> None:
    response = httpx.get(live_engine.url + "/v1/nothing-here")
    assert response.status_code == 404
    assert set(response.json()) == {"code", "error"}


async def stream_one(client: httpx.AsyncClient, index: int) -> dict[str, Any]:
    body = chat_body(
        messages=[{"role": "user", "content": f"Stream number {index} says hello."}],
        max_tokens=24, stream=True, stream_options={"include_usage": True}, temperature=1.0,
        seed=index,
    )
    chunks: list[dict[str, Any]] = []
    async with client.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200
        done = False
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunks.append(json.loads(line[6:]))
    assert done
    return {"chunks": chunks}


async def test_concurrent_streams_complete_and_batch(live_engine: Proc) -> None:
    async with httpx.AsyncClient(base_url=live_engine.url, timeout=120) as client:
        before = (await client.get("/cache")).json()["decode_steps"]
        results = await asyncio.gather(*(stream_one(client, i) for i in range(8)))
        stats = (await client.get("/cache")).json()
        metrics = (await client.get("/metrics")).text
    for result in results:
        chunks = result["chunks"]
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
        finishes = [c for c in chunks if c["choices"] and "finish_reason" in c["choices"][0]]
        assert len(finishes) == 1
        usage_chunks = [c for c in chunks if "usage" in c]
        assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
        assert usage_chunks[0]["choices"] == []
        usage = usage_chunks[0]["usage"]
        assert usage["prompt_tokens"] > 0
        assert 1 <= usage["completion_tokens"] <= 24
        if finishes[0]["choices"][0]["finish_reason"] == "length":
            assert usage["completion_tokens"] == 24
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert stats["decode_steps"] > before
    assert stats["max_decode_batch"] > 1
    batched = [line for line in metrics.splitlines()
               if line.startswith('warmroute_engine_decode_batch_size_bucket{le="1.0"}')
               or line.startswith('warmroute_engine_decode_batch_size_bucket{le="1"}')]
    total = [line for line in metrics.splitlines()
             if line.startswith("warmroute_engine_decode_batch_size_count")]
    assert batched and total
    assert float(batched[0].split()[-1]) < float(total[0].split()[-1])


async def test_client_disconnect_frees_slot_and_blocks(live_engine: Proc) -> None:
    body = chat_body(max_tokens=3000, stream=True, temperature=1.0,
                     messages=[{"role": "user", "content": "Talk for a long time please."}])
    async with httpx.AsyncClient(base_url=live_engine.url, timeout=60) as client:
        generated_before = (await client.get("/cache")).json()["generated_tokens"]
        async with client.stream("POST", CHAT, json=body) as response:
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data: ")
                if seen >= 3:
                    break
            assert (await client.get("/cache")).json()["running"] == 1
        deadline = time.monotonic() + 20
        stats = (await client.get("/cache")).json()
        while (stats["running"] or stats["blocks_used"]) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            stats = (await client.get("/cache")).json()
    assert stats["running"] == 0
    assert stats["blocks_used"] == 0
    assert stats["generated_tokens"] - generated_before < 3000  # stopped before its budget


def test_health_models_cache(live_engine: Proc) -> None:
    health = httpx.get(live_engine.url + "/health").json()
    assert health["status"] == "ok"
    assert health["cache_tokens"] > 0 and 0 < health["chars_per_token"] < 64
    assert health["scheduling_policy"] == "fcfs"  # a gateway sends it no `priority`
    models = httpx.get(live_engine.url + "/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["builtin:tiny"]
    assert httpx.get(live_engine.url + "/v1/models/builtin:tiny").json()["id"] == "builtin:tiny"
    assert httpx.get(live_engine.url + "/v1/models/nope").status_code == 404
    stats = httpx.get(live_engine.url + "/cache").json()
    assert stats["blocks_used"] + stats["blocks_free"] == stats["blocks_total"]


def test_continue_final_message_extends_the_reply(live_engine: Proc) -> None:
    """Generation resumes exactly where the final assistant text ends (as vLLM does)."""
    base = chat_body(max_tokens=12, messages=[{"role": "user", "content": "Count for me."}])
    full = httpx.post(live_engine.url + CHAT, json=base, timeout=30).json()
    text = full["choices"][0]["message"]["content"]
    ids_text = text[: len(text) // 2]
    resumed = httpx.post(live_engine.url + CHAT, timeout=30, json=chat_body(
        max_tokens=12, continue_final_message=True, add_generation_prompt=False,
        messages=[{"role": "user", "content": "Count for me."},
                  {"role": "assistant", "content": ids_text}],
    ))
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["choices"][0]["message"]["content"]
