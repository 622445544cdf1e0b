"""Resuming a Chat Completions stream on another engine when its engine breaks mid-answer.

Pure logic, no I/O (the proxy drives it). `StreamSplice` reads the engine's SSE bytes of one
client stream and rewrites them into what the client receives, keeping what was delivered:
the text, the token ids each chunk carried, the completion tokens, the first attempt's usage.
When the engine breaks, `continuation_body` is the request that continues the answer on the
next engine: the delivered text as a final assistant message to continue (with the ids it was
generated as, for an engine that can splice them), and the remaining token budget. The
continuation's events are spliced into the same client stream: the first attempt's `id`,
`created` and `model`, no second role chunk, one `finish_reason`, one usage chunk covering the
whole answer with the first attempt's prompt and cached tokens, then `[DONE]`.

Upstream requests ask for what metering and a resume need (`upstream_stream_body`): usage (the
final chunk, and so far on every chunk: vLLM's `continuous_usage_stats`, so an answer cut off
after its role chunk is billed its prompt) and, where the stream can be resumed (`n` of 1),
each chunk's `token_ids` (`return_token_ids`, as vLLM names it; it costs an engine ~0.1 ms per
16-token stream here). What the client did not ask for is stripped from its stream. Servers
that ignore these fields still resume, from text alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, TypeGuard

from warmroute import jsoncodec
from warmroute.gateway.usage import usage_of
from warmroute.sse import DATA_PREFIX, DONE, DONE_PAYLOAD, Event, encode_events
from warmroute.types import Usage

CHUNK_FIELDS = ("id", "object", "created", "model", "system_fingerprint")
REWRITTEN = ("id", "created", "model")
MAX_LINE_BYTES = 2**24
DATA_PREFIX_LEN = len(DATA_PREFIX)


def upstream_stream_body(body: dict[str, Any]) -> dict[str, Any]:
    """The client's streaming body with usage (final and so far) asked for, and token ids
    where the stream can be resumed."""
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return body  # not ours to fix: the engine answers it with a 400
    upstream = {
        **body,
        "stream_options": {
            **(options or {}), "include_usage": True, "continuous_usage_stats": True,
        },
    }
    if body.get("n") in (None, 1):  # resumable: a continuation starts from the ids
        upstream["return_token_ids"] = True
    return upstream


@dataclass(frozen=True)
class ClientView:
    """What the client asked its stream to carry, so the rest can be stripped."""

    include_usage: bool = True
    continuous_usage: bool = False
    token_ids: bool = False
    resumable: bool = True

    @staticmethod
    def of(body: dict[str, Any]) -> ClientView:
        options = body.get("stream_options")
        options = options if isinstance(options, dict) else {}
        return ClientView(
            include_usage=options.get("include_usage") is True,
            continuous_usage=options.get("continuous_usage_stats") is True,
            token_ids=body.get("return_token_ids") is True,
            resumable=body.get("n") in (None, 1),
        )


class StreamSplice:
    """One client stream across its attempts. `feed` each attempt's raw bytes; after a break,
    `continuation_body` (or `closing`), then `begin_continuation` before the next attempt."""

    def __init__(self, view: ClientView) -> None:
        self.view = view
        self.attempt = 0
        self.template: dict[str, Any] | None = None
        self.text: list[str] = []
        self.ids: list[int] | None = []
        self.base_tokens = 0
        self.attempt_chunks = 0
        self.attempt_usage: dict[str, Any] | None = None
        self.first_usage: dict[str, Any] | None = None
        self.role_sent = False
        self.finish_reason: str | None = None
        self.usage_sent = False
        self.done = False
        self.failed: str | None = None
        self.error_event: dict[str, Any] | None = None  # the engine's error event, if any
        self._partial = b""
        self._rewrites: list[tuple[str, Any]] = []  # the template's values, put into each event

    # -- reading one attempt --------------------------------------------------------------

    def feed(self, raw: bytes) -> bytes:
        """The client's bytes for these upstream bytes (events are whole lines)."""
        return encode_events(self.feed_events(raw))

    def feed_events(self, raw: bytes) -> list[Event]:
        """The client's events for these upstream bytes, decoded once: each JSON event as the
        dict the client gets (rewritten, stripped), `[DONE]` as its bytes. Run for every chunk
        of every stream: kept to plain loops and dict operations (measured per chunk)."""
        if self._partial:
            raw = self._partial + raw
        lines = raw.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE_BYTES:
            self._partial = b""
            self.failed = "an event too long to be SSE"
        out: list[Event] = []
        for line in lines:
            if not line.startswith(DATA_PREFIX):
                continue
            if self.done or self.failed is not None:
                break
            payload = line[DATA_PREFIX_LEN:].strip()  # strip() takes a trailing \r too
            if payload == DONE_PAYLOAD:
                self.done = True
                out.append(DONE)
                continue
            try:
                event = jsoncodec.loads(payload)
            except (UnicodeDecodeError, ValueError):
                self.failed = "a malformed event"
                break
            if type(event) is not dict:
                self.failed = "a malformed event"
                break
            rewritten = self._event(event)
            if rewritten is not None:
                out.append(rewritten)
        return out

    def _event(self, event: dict[str, Any]) -> dict[str, Any] | None:
        choices = event.get("choices")
        if choices is None and "error" in event and "choices" not in event:
            self.failed = f"an error event: {event['error']}"
            self.error_event = event
            return None
        if self.template is None:
            self.template = {k: event[k] for k in CHUNK_FIELDS if k in event}
            self._rewrites = [(k, self.template[k]) for k in REWRITTEN if k in self.template]
        for key, value in self._rewrites:
            if key in event:
                event[key] = value
        view = self.view
        usage = event.get("usage")
        if not choices:
            if type(usage) is not dict:
                return event
            self.attempt_usage = usage
            event["usage"] = self.client_usage(usage)
            self.usage_sent = self.usage_sent or view.include_usage
            return event if view.include_usage else None
        if type(usage) is dict:
            self.attempt_usage = usage
            if self.attempt == 0:  # the latest: the role chunk's knows no cached tokens yet
                self.first_usage = usage
            if view.continuous_usage:
                event["usage"] = self.client_usage(usage)
        if not view.continuous_usage and "usage" in event:
            del event["usage"]
        if type(choices) is not list or not all(map(well_formed, choices)):
            self.failed = "a malformed event"  # nothing of it counts as delivered
            return None
        kept = False
        for choice in choices:
            kept = self._choice(choice) or kept
        return event if kept or self.attempt == 0 else None

    def _choice(self, choice: dict[str, Any]) -> bool:
        """Track and strip one choice; False when nothing in it is left for the client."""
        delta = choice.get("delta") or {}
        if "role" in delta:
            if self.role_sent and self.attempt > 0:
                del delta["role"]
            self.role_sent = True
        content = delta.get("content")
        if self.view.token_ids:
            token_ids = choice.get("token_ids")
        else:
            token_ids = choice.pop("token_ids", None)
        if content:
            self.text.append(content if type(content) is str else str(content))
            self.attempt_chunks += 1
            ids = self.ids
            if ids is not None and is_id_list(token_ids):
                ids.extend(token_ids)
            else:
                self.ids = None  # from here on the budget counts tokens, the resume uses text
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            self.finish_reason = str(finish_reason)
        return bool(content or finish_reason or "token_ids" in choice or any(delta.values()))

    # -- what was delivered ---------------------------------------------------------------

    @property
    def delivered_text(self) -> str:
        return "".join(self.text)

    @property
    def delivered_tokens(self) -> int:
        """Completion tokens the client has: counted from the ids when every chunk had them,
        else the engine's usage so far, else one token per content chunk."""
        if self.ids is not None:
            return len(self.ids)
        if self.attempt_usage is not None:
            return self.base_tokens + int(self.attempt_usage.get("completion_tokens") or 0)
        return self.base_tokens + self.attempt_chunks

    def client_usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        """An engine's usage as the client sees it: completion tokens of every attempt, prompt
        and cached tokens of the first (a continuation's prompt holds the partial answer)."""
        if self.attempt == 0:
            return usage
        merged = copy.deepcopy(usage)
        completion = self.base_tokens + int(usage.get("completion_tokens") or 0)
        merged["completion_tokens"] = completion
        if self.first_usage is not None:
            prompt = int(self.first_usage.get("prompt_tokens") or 0)
            merged["prompt_tokens"] = prompt
            first = self.first_usage.get("prompt_tokens_details")
            details = merged.get("prompt_tokens_details")
            if type(details) is dict:  # the final usage's shape, the first attempt's counts
                cached = first.get("cached_tokens") if type(first) is dict else None
                details["cached_tokens"] = cached if type(cached) is int else 0
                text = details.get("text_tokens")
                if type(text) is int:  # less the partial answer the continuation's prompt held
                    added = int(usage.get("prompt_tokens") or 0) - prompt
                    details["text_tokens"] = max(0, text - added)
            elif type(first) is dict:
                merged["prompt_tokens_details"] = copy.deepcopy(first)
        elif self.base_tokens and self.ids is not None:
            merged["prompt_tokens"] = int(usage.get("prompt_tokens") or 0) - self.base_tokens
        merged["total_tokens"] = int(merged.get("prompt_tokens") or 0) + completion
        return merged

    # -- after a break --------------------------------------------------------------------

    @property
    def needs_engine(self) -> bool:
        """Whether what is missing needs an engine: it does unless the answer had finished."""
        return self.finish_reason is None

    def continuation_body(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The upstream request that continues the answer, made from the first attempt's
        `body`; None when no budget is left and the end can be written without an engine."""
        body = dict(body)
        body.pop("continue_token_ids", None)
        delivered = self.delivered_text
        if delivered and body.get("continue_final_message") is True:
            # The client continues its own final message: ours joins it, as text only.
            body["messages"] = extend_final_message(body["messages"], delivered)
        elif delivered:
            body["messages"] = [*body["messages"], {"role": "assistant", "content": delivered}]
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
            if self.ids is not None:
                body["continue_token_ids"] = list(self.ids)
        for key in ("max_completion_tokens", "max_tokens"):
            budget = body.get(key)
            if isinstance(budget, int) and not isinstance(budget, bool):
                remaining = budget - self.delivered_tokens
                if remaining < 1 and "continue_token_ids" not in body:
                    return None  # nothing may be generated, and nothing is held back
                body[key] = max(0, remaining)
        return body

    def begin_continuation(self) -> None:
        """The next bytes fed come from a new attempt."""
        self.base_tokens = self.delivered_tokens
        self.attempt += 1
        self.attempt_chunks = 0
        self.attempt_usage = None
        self.failed = None
        self.error_event = None
        self._partial = b""

    def attempt_counts(self) -> Usage | None:
        """The current attempt's usage as its engine last reported it (for its metrics)."""
        return usage_of({"usage": self.attempt_usage})

    def closing(self) -> bytes:
        return encode_events(self.closing_events())

    def closing_events(self) -> list[Event]:
        """The end of an answer whose engine broke after it had finished (or had no budget
        left): the finish chunk if it was not sent, the usage chunk if asked, `[DONE]`."""
        out: list[Event] = []
        template = self.template or {"object": "chat.completion.chunk"}
        if self.finish_reason is None:
            self.finish_reason = "length"
            finish = {**template, "choices": [
                {"index": 0, "delta": {}, "finish_reason": self.finish_reason}
            ]}
            out.append(finish)
        if self.view.include_usage and not self.usage_sent:
            self.usage_sent = True
            out.append({**template, "choices": [], "usage": self.final_usage()})
        self.done = True
        out.append(DONE)
        return out

    def final_usage(self) -> dict[str, Any]:
        """Usage for `closing`: the first attempt's prompt, every delivered completion token
        (an engine's own count when it reported one: it includes an end-of-sequence token)."""
        known = self.first_usage or self.attempt_usage or {}
        usage = copy.deepcopy(known)
        completion = self.delivered_tokens
        if self.attempt_usage is not None:
            reported = self.base_tokens + int(self.attempt_usage.get("completion_tokens") or 0)
            completion = max(completion, reported)
        prompt = int(known.get("prompt_tokens") or 0)
        usage.update(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )
        return usage


def extend_final_message(messages: list[Any], text: str) -> list[Any]:
    """`messages` with `text` appended to the last message's content (string or parts)."""
    final = dict(messages[-1])
    content = final.get("content")
    if isinstance(content, list):
        final["content"] = [*content, {"type": "text", "text": text}]
    else:
        final["content"] = (content or "") + text
    return [*messages[:-1], final]


EMPTY: dict[str, Any] = {}


def well_formed(choice: object) -> bool:
    """A choice is an object whose delta, if any, is an object."""
    return type(choice) is dict and type(choice.get("delta", EMPTY)) is dict


def is_id_list(value: object) -> TypeGuard[list[int]]:
    if type(value) is not list:
        return False
    if len(value) == 1:  # a stream's usual chunk: one token
        return type(value[0]) is int
    return all(type(i) is int for i in value)
