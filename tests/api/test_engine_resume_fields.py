"""The engine's opt-in wire fields for resuming a stream elsewhere (issue 8): `return_token_ids`
(each choice carries the ids its text came from), `stream_options.continuous_usage_stats`
(usage so far on every chunk) and `continue_token_ids` (continue a final assistant message from
the ids it was generated as). Without them the wire is unchanged."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.procs import Proc

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Écris-moi un poème sur les caches"}]


def body(**extra: Any) -> dict[str, Any]:
    return {"messages": MESSAGES, "max_tokens": 12, "temperature": 0, **extra}


def stream(url: str, **extra: Any) -> list[dict[str, Any]]:
    with httpx.stream("POST", url + CHAT, json=body(stream=True, **extra), timeout=60) as answer:
        assert answer.status_code == 200
        lines = [line for line in answer.iter_lines() if line.startswith("data: {")]
    return [json.loads(line[len("data: "):]) for line in lines]


def test_stream_chunks_carry_ids_and_usage_only_when_asked(live_engine: Proc) -> None:
    plain = stream(live_engine.url, stream_options={"include_usage": True})
    assert all("usage" not in c and "token_ids" not in c["choices"][0]
               for c in plain if c["choices"])
    rich = stream(live_engine.url, return_token_ids=True,
                  stream_options={"include_usage": True, "continuous_usage_stats": True})
    content = [c for c in rich if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert [c["choices"][0]["delta"] for c in content] == \
        [c["choices"][0]["delta"] for c in plain if c["choices"]
         and c["choices"][0]["delta"].get("content")]
    ids = [i for c in content for i in c["choices"][0]["token_ids"]]
    counts = [c["usage"]["completion_tokens"] for c in content]
    assert counts == sorted(counts) and counts[-1] == len(ids) == 12
    assert rich[-1]["usage"]["completion_tokens"] == 12 and rich[-1]["choices"] == []
    assert {c["usage"]["prompt_tokens"] for c in rich if c.get("usage")} == \
        {plain[-1]["usage"]["prompt_tokens"]}


def test_a_json_answer_carries_its_ids_when_asked(live_engine: Proc) -> None:
    answer = httpx.post(live_engine.url + CHAT, json=body(return_token_ids=True), timeout=60)
    choice = answer.json()["choices"][0]
    assert len(choice["token_ids"]) == answer.json()["usage"]["completion_tokens"] == 12
    plain = httpx.post(live_engine.url + CHAT, json=body(), timeout=60).json()["choices"][0]
    assert "token_ids" not in plain and plain["message"] == choice["message"]


def test_continue_token_ids_resume_the_answer_exactly(live_engine: Proc) -> None:
    whole = httpx.post(live_engine.url + CHAT, json=body(return_token_ids=True, max_tokens=24),
                       timeout=60).json()
    text = whole["choices"][0]["message"]["content"]
    chunks = stream(live_engine.url, return_token_ids=True, max_tokens=24)
    content = [c["choices"][0] for c in chunks if c["choices"]
               and c["choices"][0]["delta"].get("content")]
    delivered = "".join(c["delta"]["content"] for c in content[:5])
    ids = [i for c in content[:5] for i in c["token_ids"]]
    rest = httpx.post(live_engine.url + CHAT, timeout=60, json=body(
        messages=[*MESSAGES, {"role": "assistant", "content": delivered}],
        continue_final_message=True, add_generation_prompt=False,
        continue_token_ids=ids, max_tokens=24 - len(ids),
    )).json()
    assert delivered + rest["choices"][0]["message"]["content"] == text
    assert rest["usage"]["completion_tokens"] + len(ids) == 24


def test_continue_token_ids_need_continue_final_message(live_engine: Proc) -> None:
    answer = httpx.post(live_engine.url + CHAT, json=body(continue_token_ids=[1, 2]), timeout=60)
    assert answer.status_code == 400
    assert answer.json()["code"] == "Client specified an invalid argument"
