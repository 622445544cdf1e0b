"""Anthropic's Messages API on the wire (`POST /v1/messages`, as xAI serves it): parsing the body
into a neutral conversation, the message object, and the streamed event sequence.

Text only: `system` (a string or text blocks), `messages` whose content is a string or text
blocks; `cache_control` on a block is accepted and changes nothing (caching is automatic, as on
xAI). Usage is Anthropic's: `input_tokens` counts the prompt tokens not read from cache,
`cache_read_input_tokens` those that were (their sum is the prompt), and
`cache_creation_input_tokens` is always 0 (there is no cache write, nor its fee). A final
assistant message is a prefill: the answer continues it. `stop_reason` is `end_turn` or
`max_tokens` (the engines do not say which stop ended an answer). Pure translation: no routing,
no store.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from warmroute.api.chat_completions import describe_validation_error
from warmroute.errors import InvalidRequest
from warmroute.types import ChatMessage, SamplingParams, Usage

MAX_STOP_SEQUENCES = 4
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
MESSAGE_ROLES = ("user", "assistant")


class MessagesBody(BaseModel):
    """The fields warmroute honours; others (`metadata`, `top_k`, …) are accepted, unused."""

    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int = Field(ge=1)
    messages: list[dict[str, Any]]
    system: str | list[dict[str, Any]] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    stream: StrictBool = False  # "true" is a 400, not a stream
    metadata: dict[str, Any] | None = None


def parse_messages_body(raw: dict[str, Any]) -> MessagesBody:
    try:
        body = MessagesBody.model_validate(raw)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc)) from exc
    if not body.messages:
        raise InvalidRequest("messages: at least one message is required")
    if body.stop_sequences is not None and len(body.stop_sequences) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"stop_sequences: at most {MAX_STOP_SEQUENCES} are supported")
    return body


def blocks_text(content: object, where: str) -> str:
    """A string, or text blocks joined (`cache_control` allowed on them); nothing else."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: content must be a string or a list of text blocks")
    texts: list[str] = []
    for index, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        text = block.get("text") if isinstance(block, dict) else None
        if kind != "text" or not isinstance(text, str):
            raise InvalidRequest(
                f"{where}.{index}: only text blocks are supported, got {kind!r}"
            )
        texts.append(text)
    return "".join(texts)


def conversation(body: MessagesBody) -> list[ChatMessage]:
    """The system prompt (when there is one), then the messages."""
    messages: list[ChatMessage] = []
    if body.system is not None:
        messages.append(ChatMessage("system", blocks_text(body.system, "system")))
    for index, message in enumerate(body.messages):
        where = f"messages.{index}"
        role = message.get("role")
        if role == "user" or role == "assistant":
            messages.append(ChatMessage(role, blocks_text(message.get("content"), where)))
            continue
        raise InvalidRequest(
            f"{where}.role: {role!r} is not a message role; expected 'user' or 'assistant' "
            "(the system prompt goes in `system`)"
        )
    return messages


def prefill(messages: list[ChatMessage]) -> dict[str, bool]:
    """Engine fields that make a final assistant message one the answer continues."""
    if messages and messages[-1].role == "assistant":
        return {"continue_final_message": True, "add_generation_prompt": False}
    return {}


def sampling(body: MessagesBody) -> SamplingParams:
    return SamplingParams(
        max_tokens=body.max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=tuple(body.stop_sequences or ()),
    )


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def usage_json(usage: Usage | None, cost_in_usd_ticks: int | None = None) -> dict[str, Any]:
    cached = min(usage.cached_tokens, usage.prompt_tokens) if usage else 0
    obj: dict[str, Any] = {
        "input_tokens": usage.prompt_tokens - cached if usage else 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": usage.completion_tokens if usage else 0,
    }
    if cost_in_usd_ticks is not None:
        obj["cost_in_usd_ticks"] = cost_in_usd_ticks
    return obj


def message_object(
    message_id: str, model: str, text: str | None, finish_reason: str | None,
    usage: Usage | None, cost_in_usd_ticks: int | None = None,
) -> dict[str, Any]:
    """A message: finished (with its text), or as `message_start` shows it (no content yet)."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [] if text is None else [{"type": "text", "text": text}],
        "stop_reason": STOP_REASONS.get(finish_reason, "end_turn") if finish_reason else None,
        "stop_sequence": None,
        "usage": usage_json(usage, cost_in_usd_ticks),
    }


class MessageEvents:
    """The events of one streamed message, in Anthropic's order. Usage is known only at the
    end: `message_start` carries zeros, `message_delta` the whole usage (the SDKs take its
    counts over the start's)."""

    def __init__(self, message_id: str, model: str) -> None:
        self.message_id = message_id
        self.model = model

    def opening(self) -> Iterator[dict[str, Any]]:
        start = message_object(self.message_id, self.model, None, None, None)
        yield {"type": "message_start", "message": start}
        yield {"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}}
        yield {"type": "ping"}

    @staticmethod
    def delta(text: str) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": text}}

    @staticmethod
    def closing(
        finish_reason: str, usage: Usage, cost_in_usd_ticks: int | None = None
    ) -> Iterator[dict[str, Any]]:
        yield {"type": "content_block_stop", "index": 0}
        yield {"type": "message_delta",
               "delta": {"stop_reason": STOP_REASONS.get(finish_reason, "end_turn"),
                         "stop_sequence": None},
               "usage": usage_json(usage, cost_in_usd_ticks)}
        yield {"type": "message_stop"}
