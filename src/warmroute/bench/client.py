"""One streamed Chat Completions request, measured: engine, TTFT, end-to-end time, usage.

TTFT is the time to the first non-empty content delta (a stream's first chunk carries only the
role and comes before any prefill). The engine is read from the response headers
(`x-warmroute-engine`, which warmroute's gateway and engines set and peers relay, else
`x-engine-id`). A request fails when its status is not 200, the connection breaks, an error
event arrives inside the stream, or the stream ends without usage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

ENGINE_HEADERS = ("x-warmroute-engine", "x-engine-id")
CHAT_PATH = "/v1/chat/completions"


@dataclass
class RequestRecord:
    conv_id: str
    turn: int
    sent_s: float
    status: int
    ok: bool
    engine: str | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> RequestRecord:
        fields = RequestRecord.__dataclass_fields__
        return RequestRecord(**{k: v for k, v in data.items() if k in fields})


@dataclass
class Answer:
    record: RequestRecord
    reply: str


def engine_of(headers: httpx.Headers, names: Sequence[str] = ENGINE_HEADERS) -> str | None:
    for name in names:
        value = headers.get(name)
        if value:
            return str(value)
    return None


async def stream_chat(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    headers: Mapping[str, str],
    record: RequestRecord,
    started: float,
) -> Answer:
    """Send `body` (made a stream with usage) and fill in `record`; never raises for HTTP or
    transport failures (they are recorded), only for cancellation."""
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    parts: list[str] = []
    usage: dict[str, Any] | None = None
    try:
        async with client.stream("POST", url + CHAT_PATH, json=payload,
                                 headers=dict(headers)) as response:
            record.status = response.status_code
            record.engine = engine_of(response.headers)
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                record.error = f"HTTP {response.status_code}: {text[:200]}"
                return Answer(record, "")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event and "choices" not in event:
                    record.error = f"stream error: {str(event['error'])[:200]}"
                    return Answer(record, "".join(parts))
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if record.ttft_s is None:
                            record.ttft_s = time.perf_counter() - started
                        parts.append(str(content))
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:300]
        return Answer(record, "".join(parts))
    record.e2e_s = time.perf_counter() - started
    if usage is None:
        record.error = "the stream ended without usage"
        return Answer(record, "".join(parts))
    record.prompt_tokens = int(usage.get("prompt_tokens", 0))
    details = usage.get("prompt_tokens_details") or {}
    record.cached_tokens = int(details.get("cached_tokens") or 0)
    record.completion_tokens = int(usage.get("completion_tokens", 0))
    record.ok = True
    return Answer(record, "".join(parts))
