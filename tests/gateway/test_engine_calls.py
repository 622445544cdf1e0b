"""Reading an engine's events for the neutral surfaces (Responses, Messages, gRPC): one delta
per engine chunk, the final usage, an error event."""

from __future__ import annotations

from typing import Any

import pytest

from warmroute.gateway.engine_calls import Done, EventReader, TextDelta
from warmroute.gateway.engine_stream import UpstreamBroken
from warmroute.types import Usage


def chunk(text: str | None = None, finish: str | None = None,
          usage: dict[str, Any] | None = None) -> dict[str, Any]:
    delta = {} if text is None else {"content": text}
    event: dict[str, Any] = {"choices": [{"index": 0, "delta": delta,
                                          "finish_reason": finish}]}
    if usage is not None:
        event["usage"] = usage
    return event


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
         "prompt_tokens_details": {"cached_tokens": 4}}


def test_the_tokens_of_one_engine_chunk_go_on_as_one_delta_and_the_usage_ends_it() -> None:
    reader = EventReader()
    assert reader.read([chunk(""), chunk("Hel")]) == [TextDelta("Hel")]
    assert reader.read([chunk("lo"), chunk(","), chunk(" you")]) == [TextDelta("lo, you")]
    assert reader.read([chunk(None, "length")]) == []
    last = reader.read([{"choices": [], "usage": USAGE}, b"data: [DONE]\n\n"])
    assert last == [Done("length", Usage(prompt_tokens=7, completion_tokens=3,
                                         cached_tokens=4))]


def test_text_in_the_chunk_that_ends_the_answer_comes_before_its_end() -> None:
    items = EventReader().read([chunk("a"), chunk("b", "stop"), {"choices": [], "usage": USAGE},
                                chunk("after the usage")])
    assert items == [TextDelta("ab"), Done("stop", Usage(prompt_tokens=7, completion_tokens=3,
                                                         cached_tokens=4))]


def test_an_error_event_breaks_the_stream() -> None:
    with pytest.raises(UpstreamBroken, match="engine overloaded"):
        EventReader().read([chunk("a"), {"error": {"message": "engine overloaded"}}])
