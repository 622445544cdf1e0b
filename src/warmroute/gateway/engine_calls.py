"""Calling engines for surfaces that are not Chat Completions (Responses, gRPC).

Those surfaces build a neutral conversation; this module turns it into one Chat Completions
call through the proxy (so placement, failover and metrics are the same as for relayed
requests) and turns the engine's JSON or SSE answer back into neutral events: text deltas and
one `Finished` with usage. A stream whose engine breaks mid-answer is resumed on the next
engine as a relayed one is (`proxy.Streaming`), so these surfaces see one unbroken answer. An
engine's error answer becomes the matching exception (`faults.engine_error`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from warmroute.gateway.engine_stream import UpstreamBroken
from warmroute.gateway.faults import engine_error
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.policies import Decision
from warmroute.gateway.proxy import Relayed
from warmroute.gateway.resume import ClientView, upstream_stream_body
from warmroute.gateway.streaming import Streaming
from warmroute.gateway.usage import usage_from
from warmroute.sse import Event
from warmroute.types import ChatMessage, SamplingParams, Usage


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Done:
    finish_reason: str
    usage: Usage


@dataclass(frozen=True)
class Answer:
    """A whole non-streamed answer and the engine that gave it."""

    engine_id: str
    model: str
    text: str
    finish_reason: str
    usage: Usage


def chat_body(
    model: str | None,
    messages: Sequence[ChatMessage],
    sampling: SamplingParams,
    stream: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "stream": stream,
    }
    if model:
        body["model"] = model
    if sampling.max_tokens is not None:
        body["max_tokens"] = sampling.max_tokens
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def complete(gw: Gateway, decision: Decision, body: dict[str, Any],
                   background: bool = False) -> Answer:
    """One whole answer; `background` for a deferred completion (`Proxy.complete`)."""
    answer = await gw.proxy.complete(decision, gw.upstream_payload(body), background)
    if answer.status != 200:
        raise engine_error(answer.status, answer.body, answer.headers)
    data = json.loads(answer.body)
    choice = data["choices"][0]
    return Answer(
        engine_id=answer.engine_id,
        model=str(data.get("model", "")),
        text=choice["message"].get("content") or "",
        finish_reason=choice.get("finish_reason") or "stop",
        usage=usage_from(data["usage"]),
    )


async def open_stream(gw: Gateway, decision: Decision, body: dict[str, Any]) -> Streaming:
    """The engine's stream once its first chunk arrived (resumed on another engine if its
    engine breaks mid-answer); the caller must `aclose()` it."""
    payload = gw.upstream_payload(upstream_stream_body(body))
    opened = await gw.proxy.open_stream(decision, payload, ClientView(), gw.config.max_resumes)
    if isinstance(opened, Relayed):
        raise engine_error(opened.status, opened.body, opened.headers)
    return opened


class EventReader:
    """An engine's events (a list per engine chunk, as the splice decoded them) read into text
    deltas and one final `Done`: the one reading every neutral surface shares, awaited by no
    iterator layer. An error event raises `UpstreamBroken`."""

    def __init__(self) -> None:
        self.finish_reason: str | None = None

    def read(self, events: Sequence[Event]) -> list[TextDelta | Done]:
        """The items of one engine chunk, in order: its text as one delta (the tokens that
        came together go on together: a surface's message or event each costs its encoding
        and, on gRPC, a trip through the transport), then the `Done` if it ended."""
        texts: list[str] = []
        done: Done | None = None
        for event in events:
            if not isinstance(event, dict):  # [DONE]
                continue
            if "error" in event and "choices" not in event:
                raise UpstreamBroken(str(event["error"]))
            for choice in event.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    texts.append(text)
                self.finish_reason = choice.get("finish_reason") or self.finish_reason
            if event.get("usage"):
                done = Done(self.finish_reason or "stop", usage_from(event["usage"]))
                break
        items: list[TextDelta | Done] = [TextDelta("".join(texts))] if texts else []
        return [*items, done] if done is not None else items


def ended_without_usage(stream: Streaming) -> UpstreamBroken:
    return UpstreamBroken(f"engine {stream.engine_id} ended its stream without usage")


async def stream_events(stream: Streaming) -> AsyncIterator[TextDelta | Done]:
    """Parse the engine's SSE into text deltas and one final `Done`; a stream that ends
    without its usage chunk, or with an error event, raises `UpstreamBroken`."""
    reader = EventReader()
    while (events := await stream.next_events()) is not None:
        for item in reader.read(events):
            yield item
            if isinstance(item, Done):
                return
    raise ended_without_usage(stream)
