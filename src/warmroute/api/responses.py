"""The Responses API on the wire (`reference/xai-api.md` §2): parsing `input` items, the response
object, and the streamed event sequence with `sequence_number`.

Pure translation: no routing, no store. The gateway's handler rebuilds history from the store,
calls an engine through Chat Completions, and uses these shapes to answer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from warmroute.api.chat_completions import describe_validation_error
from warmroute.errors import InvalidRequest
from warmroute.types import ROLES, ChatMessage, Usage

TEXT_PART_TYPES = ("input_text", "output_text", "text")
CompactionOpener = Callable[[dict[str, Any], str], list[ChatMessage]]


class ResponsesBody(BaseModel):
    """The fields warmroute honours; others are accepted and ignored, as xAI does."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: StrictBool = True
    prompt_cache_key: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: StrictBool = False  # "true" is a 400, not a stream
    metadata: dict[str, Any] | None = None


def parse_responses_body(body: dict[str, Any]) -> ResponsesBody:
    try:
        parsed = ResponsesBody.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc)) from exc
    if parsed.instructions is not None and parsed.previous_response_id is not None:
        raise InvalidRequest(
            "instructions cannot be used with previous_response_id: the previous response's "
            "system prompt is kept"
        )
    if isinstance(parsed.input, list) and not parsed.input:
        raise InvalidRequest("input must not be empty")
    return parsed


def _item_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of text parts")
    texts: list[str] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        text = part.get("text") if isinstance(part, dict) else None
        if kind not in TEXT_PART_TYPES or not isinstance(text, str):
            raise InvalidRequest(
                f"{where}.content.{index}: only text parts are supported, got {kind!r}"
            )
        texts.append(text)
    return "".join(texts)


def input_messages(
    input_: str | list[dict[str, Any]], compaction: CompactionOpener | None = None
) -> list[ChatMessage]:
    """The conversation items of `input`: messages and earlier output messages. With
    `compaction` (which opens one), a compaction item stands for the history it replaced, and
    every item before it is dropped."""
    if isinstance(input_, str):
        return [ChatMessage("user", input_)]
    messages: list[ChatMessage] = []
    for index, item in enumerate(input_):
        where = f"input.{index}"
        kind = item.get("type", "message")
        if kind == "reasoning":
            continue  # no reasoning models here; a replayed reasoning item carries no text
        if kind == "compaction" and compaction is not None:
            messages = compaction(item, where)
            continue
        if kind != "message":
            raise InvalidRequest(f"{where}: unsupported item type {kind!r}")
        role = item.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"{where}.role: unknown role {role!r}; expected one of {', '.join(ROLES)}"
            )
        if "content" not in item:
            raise InvalidRequest(f"{where}.content is required")
        messages.append(ChatMessage(role, _item_text(item["content"], where)))
    return messages


def new_response_id() -> str:
    return str(uuid.uuid4())


def new_message_id() -> str:
    return f"msg_{uuid.uuid4()}"


def usage_object(usage: Usage, cost_in_usd_ticks: int | None = None) -> dict[str, Any]:
    obj = {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
        "num_sources_used": 0,
        "num_server_side_tools_used": 0,
    }
    if cost_in_usd_ticks is not None:
        obj["cost_in_usd_ticks"] = cost_in_usd_ticks
    return obj


def message_item(message_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": message_id,
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "logprobs": [], "annotations": []}],
    }


@dataclass
class ResponseDraft:
    """What is known of a response while it is being produced."""

    body: ResponsesBody
    model: str
    response_id: str = field(default_factory=new_response_id)
    message_id: str = field(default_factory=new_message_id)
    created_at: int = field(default_factory=lambda: int(time.time()))

    def object(
        self,
        text: str | None = None,
        finish_reason: str | None = None,
        usage: Usage | None = None,
        cost_in_usd_ticks: int | None = None,
    ) -> dict[str, Any]:
        """The response object: in progress (no text yet) or finished."""
        done = finish_reason is not None
        incomplete = finish_reason == "length"
        status = "incomplete" if incomplete else "completed" if done else "in_progress"
        body = self.body
        output = [message_item(self.message_id, text or "", status)] if done else []
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": int(time.time()) if done else None,
            "model": self.model,
            "status": status,
            "output": output,
            "usage": usage_object(usage, cost_in_usd_ticks) if usage else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "parallel_tool_calls": True,
            "previous_response_id": body.previous_response_id,
            "prompt_cache_key": body.prompt_cache_key,
            "reasoning": None,
            "service_tier": "default",
            "store": body.store,
            "temperature": body.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": body.top_p,
            "truncation": "disabled",
            "metadata": body.metadata or {},
            "background": False,
        }


class ResponseEvents:
    """The streamed events of one response, in xAI's order, numbered from 0."""

    def __init__(self, draft: ResponseDraft) -> None:
        self.draft = draft
        self.sequence = 0
        self.text: list[str] = []

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def opening(self) -> Iterator[dict[str, Any]]:
        in_progress = self.draft.object()
        yield self._event("response.created", response=in_progress)
        yield self._event("response.in_progress", response=in_progress)
        item = {**message_item(self.draft.message_id, "", "in_progress"), "content": []}
        yield self._event("response.output_item.added", output_index=0, item=item)
        yield self._event(
            "response.content_part.added",
            item_id=self.draft.message_id,
            output_index=0,
            content_index=0,
            part={"type": "output_text", "text": "", "logprobs": [], "annotations": []},
        )

    def delta(self, text: str) -> dict[str, Any]:
        self.text.append(text)
        return self._event(
            "response.output_text.delta",
            item_id=self.draft.message_id,
            output_index=0,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def closing(
        self, finish_reason: str, usage: Usage, cost_in_usd_ticks: int | None = None
    ) -> Iterator[dict[str, Any]]:
        text = "".join(self.text)
        final = self.draft.object(text, finish_reason, usage, cost_in_usd_ticks)
        ids = {"item_id": self.draft.message_id, "output_index": 0, "content_index": 0}
        yield self._event("response.output_text.done", **ids, text=text, logprobs=[])
        yield self._event(
            "response.content_part.done",
            **ids,
            part={"type": "output_text", "text": text, "logprobs": [], "annotations": []},
        )
        yield self._event("response.output_item.done", output_index=0, item=final["output"][0])
        # Always `response.completed` (the SDKs wait for it); a cut-off answer says so in status.
        yield self._event("response.completed", response=final)
