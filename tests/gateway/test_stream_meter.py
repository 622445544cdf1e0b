"""The gateway's stream metering: the ledger row is written once, before the usage chunk or
the end of the stream leaves, whatever shape the engine's chunks come in."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from warmroute.gateway.stream_meter import StreamMeter
from warmroute.sse import parse_events


class Meter:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    async def record(self, caller: Any, surface: str, model: str, engine: str,
                     counts: Any) -> int:
        self.rows.append((surface, model, engine, counts.total_tokens))
        return 42

    record_shielded = record


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def upstream(done: bool, usage_sent: bool = False) -> Any:
    splice = SimpleNamespace(
        done=done, usage_sent=usage_sent, template={"model": "sim"},
        final_usage=lambda: {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    )
    return SimpleNamespace(splice=splice, engine_id="e1")


def test_the_last_answer_chunk_and_done_in_one_read_are_metered_once() -> None:
    """A client that did not ask for usage: the finish chunk and `[DONE]` may arrive in one
    read after the stream is done; that chunk passes unchanged and is billed once."""
    meter = Meter()
    stream = StreamMeter(meter, SimpleNamespace(), upstream(done=True))  # type: ignore[arg-type]
    chunk = event({"choices": [{"delta": {}, "finish_reason": "stop"}]}) + b"data: [DONE]\n\n"
    sent = asyncio.run(stream.before_sending(parse_events(chunk)))
    assert parse_events(sent) == parse_events(chunk)
    assert meter.rows == [("chat.completions", "sim", "e1", 8)]
    done = [b"data: [DONE]\n\n"]
    assert asyncio.run(stream.before_sending(done)) == b"data: [DONE]\n\n"
    assert len(meter.rows) == 1


def test_chunks_before_the_end_are_encoded_and_not_metered() -> None:
    meter = Meter()
    stream = StreamMeter(meter, SimpleNamespace(), upstream(done=False))  # type: ignore[arg-type]
    delta = {"choices": [{"delta": {"content": "hé"}, "finish_reason": None}]}
    assert asyncio.run(stream.before_sending([delta])) == (
        b'data: {"choices":[{"delta":{"content":"h\xc3\xa9"},"finish_reason":null}]}\n\n')
    assert meter.rows == []


def test_the_usage_chunk_gets_its_cost() -> None:
    meter = Meter()
    stream = StreamMeter(meter, SimpleNamespace(),  # type: ignore[arg-type]
                         upstream(done=False, usage_sent=True))
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    chunk = event({"choices": [], "usage": usage}) + b"data: [DONE]\n\n"
    sent = parse_events(asyncio.run(stream.before_sending(parse_events(chunk))))
    assert sent[0]["usage"]["cost_in_usd_ticks"] == 42
    assert sent[1] == b"data: [DONE]\n\n"
    assert meter.rows == [("chat.completions", "sim", "e1", 8)]
