"""Responses API wire shapes: input items, the response object and the event order."""

from __future__ import annotations

from typing import Any

import pytest

from warmroute.api.responses import (
    ResponseDraft,
    ResponseEvents,
    input_messages,
    parse_responses_body,
)
from warmroute.errors import InvalidRequest
from warmroute.types import ChatMessage, Usage


def test_string_input_is_one_user_message() -> None:
    assert input_messages("hi") == [ChatMessage("user", "hi")]


def test_items_with_parts_and_earlier_output() -> None:
    items: list[dict[str, Any]] = [
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                         {"type": "input_text", "text": "b"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "ok", "annotations": []}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ]
    assert input_messages(items) == [
        ChatMessage("developer", "Be brief."), ChatMessage("user", "ab"),
        ChatMessage("assistant", "ok"),
    ]


@pytest.mark.parametrize("items", [
    [{"role": "wizard", "content": "x"}],
    [{"role": "user"}],
    [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}],
    [{"role": "user", "content": 5}],
    [{"type": "function_call_output", "call_id": "c", "output": "x"}],
])
def test_malformed_items_are_invalid(items: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidRequest):
        input_messages(items)


@pytest.mark.parametrize("body", [
    {},
    {"input": []},
    {"input": "x", "max_output_tokens": 0},
    {"input": "x", "temperature": 3},
    {"input": "x", "instructions": "sys", "previous_response_id": "abc"},
])
def test_bad_bodies_are_invalid(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        parse_responses_body(body)


def test_response_object_shape() -> None:
    draft = ResponseDraft(parse_responses_body({"input": "q", "prompt_cache_key": "k"}), "m")
    obj = draft.object("hello", "stop", Usage(40, 5, 32))
    assert obj["object"] == "response" and obj["status"] == "completed"
    assert "output_text" not in obj
    assert obj["prompt_cache_key"] == "k"
    assert obj["output"][0]["id"].startswith("msg_")
    assert obj["output"][0]["content"][0] == {
        "type": "output_text", "text": "hello", "logprobs": [], "annotations": []}
    assert obj["usage"] == {
        "input_tokens": 40, "input_tokens_details": {"cached_tokens": 32}, "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 45,
        "num_sources_used": 0, "num_server_side_tools_used": 0}
    cut = draft.object("hel", "length", Usage(40, 3, 0))
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}


def test_event_sequence() -> None:
    events = ResponseEvents(ResponseDraft(parse_responses_body({"input": "q"}), "m"))
    stream = [*events.opening(), events.delta("he"), events.delta("llo"),
              *events.closing("stop", Usage(10, 2, 0))]
    assert [e["type"] for e in stream] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in stream] == list(range(len(stream)))
    assert stream[-1]["response"]["output"][0]["content"][0]["text"] == "hello"
    assert stream[-1]["response"]["usage"]["total_tokens"] == 12
