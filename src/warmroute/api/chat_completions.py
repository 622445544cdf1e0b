"""Chat Completions on the wire (`reference/xai-api.md` §3): request parsing and answer shapes.

Used by the engine's server and, for the routing key and pass-through, by the gateway. Pydantic
lives here, at the edge; inside, a `ChatRequest` dataclass travels on.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from warmroute.errors import InvalidRequest
from warmroute.types import ROLES, ChatMessage, ChatRequest, SamplingParams, Usage

SYSTEM_FINGERPRINT = "fp_warmroute"


class StreamOptions(BaseModel):
    """`include_usage`: a final usage chunk. `continuous_usage_stats` (vLLM's): usage so far
    on every chunk too."""

    model_config = ConfigDict(extra="allow")
    include_usage: bool = False
    continuous_usage_stats: bool = False


class WireMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionBody(BaseModel):
    """The fields warmroute honours; anything else is accepted and ignored, as xAI does."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[WireMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)  # accepted, unused
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    stop: str | list[str] | None = None
    n: int | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    cache_salt: str | None = None
    prompt_cache_key: str | None = None
    continue_final_message: bool = False
    add_generation_prompt: bool = True
    # warmroute extensions that other servers ignore (vLLM knows `return_token_ids`): each
    # choice carries the `token_ids` its text was generated from; a continued final message
    # can name the ids it was generated as, so it resumes exactly (see `Engine.prepare`).
    return_token_ids: bool = False
    continue_token_ids: list[int] | None = None
    # vLLM's: lower is scheduled sooner, on an engine run with `--scheduling-policy priority`.
    priority: StrictInt = 0


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def parse_body(body: dict[str, Any]) -> ChatCompletionBody:
    try:
        parsed = ChatCompletionBody.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc)) from exc
    if not parsed.messages:
        raise InvalidRequest("messages must not be empty")
    if parsed.n not in (None, 1):
        raise InvalidRequest("only n=1 is supported")
    if isinstance(parsed.stop, list) and len(parsed.stop) > 4:
        raise InvalidRequest("stop takes at most 4 sequences")
    if parsed.continue_final_message and parsed.add_generation_prompt:
        raise InvalidRequest("continue_final_message needs add_generation_prompt: false")
    if parsed.continue_token_ids is not None and not parsed.continue_final_message:
        raise InvalidRequest("continue_token_ids needs continue_final_message: true")
    return parsed


def message_text(message: WireMessage, index: int) -> str:
    """A message's text: a string, or text parts joined; anything else is refused."""
    content = message.content
    if content is None:
        if message.role == "assistant":
            return ""
        raise InvalidRequest(f"messages.{index}.content is required")
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for part in content:
        kind = part.get("type")
        if kind not in ("text", "input_text") or not isinstance(part.get("text"), str):
            raise InvalidRequest(
                f"messages.{index}.content: only text parts are supported, got {kind!r}"
            )
        texts.append(part["text"])
    return "".join(texts)


def to_chat_request(parsed: ChatCompletionBody) -> ChatRequest:
    messages: list[ChatMessage] = []
    for index, message in enumerate(parsed.messages):
        if message.role not in ROLES:
            raise InvalidRequest(
                f"messages.{index}.role: unknown role {message.role!r}; "
                f"expected one of {', '.join(ROLES)}"
            )
        messages.append(ChatMessage(message.role, message_text(message, index)))
    stop = (parsed.stop,) if isinstance(parsed.stop, str) else tuple(parsed.stop or ())
    max_tokens = (
        parsed.max_completion_tokens
        if parsed.max_completion_tokens is not None
        else parsed.max_tokens
    )
    return ChatRequest(
        messages=tuple(messages),
        sampling=SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if parsed.temperature is None else parsed.temperature,
            top_p=1.0 if parsed.top_p is None else parsed.top_p,
            seed=parsed.seed,
            stop=stop,
        ),
        cache_salt=parsed.cache_salt or "",
        continue_final_message=parsed.continue_final_message,
        priority=parsed.priority,
    )


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {
            "text_tokens": usage.prompt_tokens,
            "audio_tokens": 0,
            "image_tokens": 0,
            "cached_tokens": usage.cached_tokens,
        },
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
        "num_sources_used": 0,
    }


def completion_json(
    completion_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    usage: Usage,
    token_ids: list[int] | None = None,
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage_json(usage),
    }
    if token_ids is not None:
        answer["choices"][0]["token_ids"] = token_ids
    return answer


def chunk_json(
    completion_id: str,
    created: int,
    model: str,
    *,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    usage: Usage | None = None,
    token_ids: list[int] | None = None,
    usage_so_far: Usage | None = None,
) -> dict[str, Any]:
    """One `chat.completion.chunk`: a delta, a finish, or (with `usage`) the final usage chunk.
    `token_ids` and `usage_so_far` are added to a delta or finish chunk when the client asked
    for them (`return_token_ids`, `stream_options.continuous_usage_stats`)."""
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if usage is not None:
        chunk["choices"] = []
        chunk["usage"] = usage_json(usage)
        return chunk
    choice: dict[str, Any] = {"index": 0, "delta": delta or {}}
    if finish_reason is not None:
        choice["finish_reason"] = finish_reason
    if token_ids is not None:
        choice["token_ids"] = token_ids
    chunk["choices"] = [choice]
    if usage_so_far is not None:
        chunk["usage"] = usage_so_far_json(usage_so_far)
    return chunk


def usage_so_far_json(usage: Usage) -> dict[str, Any]:
    """The usage so far on a delta chunk (`continuous_usage_stats`), in vLLM's shape: the three
    counts and the cached tokens, not the whole of `usage_json` (which the final usage chunk
    carries). Every chunk of a gateway's stream carries it, so its size is paid per token: the
    whole object more than doubled a chunk."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }
