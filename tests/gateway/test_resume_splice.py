"""`StreamSplice` on scripted engine events: what the client sees of a stream and its
continuation, and the request that continues a broken answer; the `max_resumes` setting.
No sockets, no engines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from warmroute.app.cli import build_parser
from warmroute.app.gateway_command import gateway_config
from warmroute.config import GatewayConfig
from warmroute.gateway.resume import ClientView, StreamSplice, upstream_stream_body
from warmroute.types import Usage

FIRST = {"id": "first", "object": "chat.completion.chunk", "created": 100, "model": "m",
         "system_fingerprint": "fp"}
SECOND = {**FIRST, "id": "second", "created": 200, "model": "m2"}


def usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"text_tokens": prompt, "cached_tokens": cached}}


def sse(event: dict[str, Any] | str) -> bytes:
    payload = event if isinstance(event, str) else json.dumps(event)
    return f"data: {payload}\n\n".encode()


def role(head: dict[str, Any]) -> dict[str, Any]:
    return {**head, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}


def content(head: dict[str, Any], text: str, ids: list[int] | None,
            so_far: dict[str, Any] | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": {"content": text}}
    if ids is not None:
        choice["token_ids"] = ids
    event: dict[str, Any] = {**head, "choices": [choice]}
    if so_far is not None:
        event["usage"] = so_far
    return event


def finish(head: dict[str, Any], reason: str = "length") -> dict[str, Any]:
    return {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


def final_usage(head: dict[str, Any], used: dict[str, Any]) -> dict[str, Any]:
    return {**head, "choices": [], "usage": used}


def events(raw: bytes) -> list[Any]:
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if block:
            assert block.startswith("data: ")
            payload = block[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


FIRST_ATTEMPT = [
    role(FIRST),
    content(FIRST, "Hel", [1, 2], usage(30, 2, 16)),
    content(FIRST, "lo", [3], usage(30, 3, 16)),
]


def test_the_first_attempt_reaches_the_client_without_what_it_did_not_ask_for() -> None:
    splice = StreamSplice(ClientView(include_usage=True))
    seen = events(b"".join(splice.feed(sse(e)) for e in FIRST_ATTEMPT))
    assert seen == [role(FIRST), content(FIRST, "Hel", None), content(FIRST, "lo", None)]
    assert splice.delivered_text == "Hello"
    assert splice.ids == [1, 2, 3] and splice.delivered_tokens == 3
    assert splice.first_usage == usage(30, 3, 16)  # the first attempt's latest usage


def test_events_split_anywhere_come_out_the_same() -> None:
    raw = b"".join(sse(e) for e in FIRST_ATTEMPT)
    whole = StreamSplice(ClientView()).feed(raw)
    pieces = StreamSplice(ClientView())
    assert b"".join(pieces.feed(raw[i : i + 7]) for i in range(0, len(raw), 7)) == whole


def test_what_the_client_asked_for_is_kept() -> None:
    splice = StreamSplice(ClientView(include_usage=True, continuous_usage=True, token_ids=True))
    seen = events(b"".join(splice.feed(sse(e)) for e in FIRST_ATTEMPT))
    assert seen == FIRST_ATTEMPT


def test_the_continuation_is_spliced_into_the_same_stream() -> None:
    splice = StreamSplice(ClientView(include_usage=True))
    for event in FIRST_ATTEMPT:
        splice.feed(sse(event))
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "stream": True}
    assert splice.continuation_body(body) == {
        "messages": [{"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "Hello"}],
        "max_tokens": 7, "stream": True, "continue_final_message": True,
        "add_generation_prompt": False, "continue_token_ids": [1, 2, 3],
    }
    splice.begin_continuation()
    continuation: list[dict[str, Any] | str] = [
        role(SECOND),
        content(SECOND, " world", [4, 5], usage(33, 2, 0)),
        finish(SECOND),
        final_usage(SECOND, usage(33, 3, 0)),
        "[DONE]",
    ]
    seen = events(b"".join(splice.feed(sse(e)) for e in continuation))
    assert seen == [
        content(FIRST, " world", None),
        finish(FIRST),
        final_usage(FIRST, usage(30, 3 + 3, 16)),
        "[DONE]",
    ]
    assert splice.done and splice.delivered_text == "Hello world"
    # A second break would continue from everything delivered, against the original budget.
    again = splice.continuation_body(body)
    assert again is not None
    assert again["continue_token_ids"] == [1, 2, 3, 4, 5] and again["max_tokens"] == 5


def test_a_continuation_keeps_its_final_usage_shape_with_the_first_attempts_counts() -> None:
    """Usage so far in vLLM's shape (no details: an engine's per-chunk usage is compact), a
    final usage with all its details: the client's final usage has the final's fields, with
    the prompt, text and cached tokens of its own prompt, not the continuation's."""
    compact = {"prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32}
    splice = StreamSplice(ClientView(include_usage=True))
    for event in [role(FIRST), content(FIRST, "Hel", [1, 2], compact)]:
        splice.feed(sse(event))
    splice.begin_continuation()
    ending = final_usage(SECOND, {**usage(32, 1, 20), "completion_tokens_details": {"x": 0}})
    seen = events(b"".join(splice.feed(sse(e)) for e in [content(SECOND, "lo", [3]),
                                                          finish(SECOND), ending, "[DONE]"]))
    assert seen[-2]["usage"] == {
        "prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33,
        "prompt_tokens_details": {"text_tokens": 30, "cached_tokens": 0},
        "completion_tokens_details": {"x": 0}}


def test_continuous_usage_asked_by_the_client_covers_the_whole_answer() -> None:
    splice = StreamSplice(ClientView(include_usage=True, continuous_usage=True))
    for event in FIRST_ATTEMPT:
        splice.feed(sse(event))
    splice.begin_continuation()
    seen = events(splice.feed(sse(content(SECOND, "!", [9], usage(33, 1, 0)))))
    assert seen == [content(FIRST, "!", None, usage(30, 4, 16))]


def test_without_token_ids_the_budget_comes_from_usage_then_from_chunks() -> None:
    splice = StreamSplice(ClientView())
    splice.feed(sse(role(FIRST)) + sse(content(FIRST, "ab", None, usage(30, 5, 0))))
    body = {"messages": [{"role": "user", "content": "q"}], "max_completion_tokens": 8}
    resumed = splice.continuation_body(body)
    assert resumed is not None
    assert resumed["max_completion_tokens"] == 3 and "continue_token_ids" not in resumed
    bare = StreamSplice(ClientView())
    bare.feed(sse(role(FIRST)) + sse(content(FIRST, "a", None)) + sse(content(FIRST, "b", None)))
    resumed = bare.continuation_body(body)
    assert resumed is not None and resumed["max_completion_tokens"] == 6


def test_a_client_continuation_is_extended_with_text_only() -> None:
    splice = StreamSplice(ClientView())
    splice.feed(sse(content(FIRST, " there", [7])))
    body = {"messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": "Hi"}],
            "continue_final_message": True, "add_generation_prompt": False}
    assert splice.continuation_body(body) == {**body, "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "Hi there"}]}


def test_nothing_delivered_reruns_the_request_as_it_was() -> None:
    splice = StreamSplice(ClientView())
    splice.feed(sse(role(FIRST)))
    body = {"messages": [{"role": "user", "content": "q"}], "max_tokens": 4}
    assert splice.continuation_body(body) == body


@pytest.mark.parametrize("with_ids", [True, False])
def test_no_budget_left(with_ids: bool) -> None:
    splice = StreamSplice(ClientView(include_usage=True))
    splice.feed(sse(content(FIRST, "abc", [1, 2, 3] if with_ids else None, usage(9, 3, 0))))
    resumed = splice.continuation_body({"messages": [], "max_tokens": 3})
    if with_ids:  # the engine may still owe text it held back: ask it, for nothing new
        assert resumed is not None and resumed["max_tokens"] == 0
        return
    assert resumed is None
    assert events(splice.closing()) == [
        finish(FIRST), final_usage(FIRST, usage(9, 3, 0)), "[DONE]"]


def test_a_break_after_the_finish_needs_no_engine() -> None:
    splice = StreamSplice(ClientView(include_usage=True))
    for event in [*FIRST_ATTEMPT, finish(FIRST, "stop")]:
        splice.feed(sse(event))
    assert not splice.needs_engine
    assert events(splice.closing()) == [final_usage(FIRST, usage(30, 3, 16)), "[DONE]"]


def test_an_error_event_is_a_break_not_part_of_the_answer() -> None:
    splice = StreamSplice(ClientView())
    out = splice.feed(sse(content(FIRST, "a", [1])) + sse({"code": "x", "error": "boom"})
                      + sse(content(FIRST, "b", [2])))
    assert events(out) == [content(FIRST, "a", None)]
    assert splice.failed is not None and "boom" in splice.failed
    assert not splice.done


def test_usage_is_dropped_when_the_client_did_not_ask() -> None:
    splice = StreamSplice(ClientView(include_usage=False))
    out = splice.feed(sse(finish(FIRST)) + sse(final_usage(FIRST, usage(1, 1, 0))) + sse("[DONE]"))
    assert events(out) == [finish(FIRST), "[DONE]"]


def test_upstream_bodies_ask_for_usage_and_ids() -> None:
    body = {"stream": True, "stream_options": {"include_usage": False, "x": 1}}
    assert upstream_stream_body(body) == {
        "stream": True, "return_token_ids": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True, "x": 1},
    }
    assert upstream_stream_body({"stream_options": 5}) == {"stream_options": 5}
    # n of 2 cannot be resumed: no token ids asked for, unless the client asked itself
    options = {"include_usage": True, "continuous_usage_stats": True}
    assert upstream_stream_body({"n": 2}) == {"n": 2, "stream_options": options}
    assert upstream_stream_body({"n": 2, "return_token_ids": True}) == {
        "n": 2, "return_token_ids": True, "stream_options": options}
    assert ClientView.of(body) == ClientView(include_usage=False)
    assert ClientView.of({"n": 2, "return_token_ids": True}) == ClientView(
        include_usage=False, token_ids=True, resumable=False)


def test_max_resumes_comes_from_the_file_or_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\nmax_resumes = 1\n\n[[engines]]\nurl = "http://127.0.0.1:1"\n')
    assert GatewayConfig().max_resumes == 2
    assert GatewayConfig.from_toml(path).max_resumes == 1
    args = build_parser().parse_args(["gateway", "--config", str(path), "--max-resumes", "0"])
    assert gateway_config(args).max_resumes == 0
    with pytest.raises(ValueError, match="max_resumes"):
        GatewayConfig(max_resumes=-1)


@pytest.mark.parametrize("line", [b"data: {not json\n\n", b"data: [1, 2]\n\n",
                                  b'data: {"choices": ["x"]}\n\n', b'data: {"choices": 5}\n\n',
                                  b'data: {"choices": [{"delta": "x"}]}\n\n'])
def test_a_malformed_event_is_a_break(line: bytes) -> None:
    splice = StreamSplice(ClientView())
    assert splice.feed(sse(content(FIRST, "a", [1])) + line) == sse_out(content(FIRST, "a", None))
    assert splice.failed == "a malformed event"


def sse_out(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def test_events_are_decoded_once_and_the_attempt_usage_is_the_last_reported() -> None:
    """The pipeline's one decoder: `feed_events` gives the client's events as dicts (what
    `feed` encodes), and the attempt's usage (for its engine's metrics) is the last one the
    engine reported: so far on each chunk, then the final usage chunk."""
    splice = StreamSplice(ClientView(include_usage=True))
    assert splice.attempt_counts() is None
    first = splice.feed_events(sse(role(FIRST)) + sse(content(FIRST, "ab", [1, 2], usage(9, 2, 0))))
    assert first == [role(FIRST), content(FIRST, "ab", None)]
    assert splice.attempt_counts() == Usage(9, 2, 0)
    end = splice.feed_events(sse(final_usage(FIRST, usage(9, 3, 0))) + sse("[DONE]"))
    assert end == [final_usage(FIRST, usage(9, 3, 0)), b"data: [DONE]\n\n"]
    assert splice.attempt_counts() == Usage(9, 3, 0)
    assert splice.usage_sent and splice.done


def test_nothing_of_a_malformed_event_counts_as_delivered() -> None:
    splice = StreamSplice(ClientView())
    good = {"index": 0, "delta": {"content": "b"}, "token_ids": [2]}
    bad = {**FIRST, "choices": [good, {"index": 1, "delta": "x"}]}
    splice.feed(sse(content(FIRST, "a", [1])) + sse(bad))
    assert splice.failed == "a malformed event"
    assert (splice.delivered_text, splice.ids) == ("a", [1])


def test_a_null_usage_is_dropped_too_when_the_client_did_not_ask() -> None:
    splice = StreamSplice(ClientView())
    out = splice.feed(sse({**content(FIRST, "a", [1]), "usage": None}))
    assert events(out) == [content(FIRST, "a", None)]


def test_a_chunk_of_many_token_ids_and_one_that_is_not_an_id() -> None:
    splice = StreamSplice(ClientView())
    splice.feed(sse(content(FIRST, "ab", [1, 2])) + sse(content(FIRST, "c", [3])))
    assert splice.ids == [1, 2, 3]
    splice.feed(sse(content(FIRST, "d", [True])))  # JSON true is not a token id
    assert splice.ids is None and splice.delivered_text == "abcd"


def test_an_event_with_choices_null_is_relayed_not_taken_for_an_error_event() -> None:
    splice = StreamSplice(ClientView())
    odd = {**FIRST, "choices": None, "error": "x"}
    assert events(splice.feed(sse(odd))) == [odd]
    assert splice.failed is None and splice.error_event is None
