"""xAI's gRPC messages ↔ warmroute's neutral types, using the protobuf modules `xai-sdk` ships.

Follows the SDK's reading rules (`reference/xai-sdk-grpc.md` §6, §8): every output and every
chunk carries `role=ROLE_ASSISTANT` and `index=0`; `id`, `model`, `created` on every chunk;
usage on the last chunk, which also carries the finish reason.
"""

from __future__ import annotations

import time
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from xai_sdk.proto import chat_pb2, sample_pb2, usage_pb2

from warmroute.api.responses import CompactionOpener
from warmroute.errors import InvalidRequest
from warmroute.gateway.compaction import Compacted
from warmroute.types import ChatMessage, Role, SamplingParams, Usage

ROLE_NAMES: dict[int, Role] = {
    chat_pb2.MessageRole.ROLE_USER: "user",
    chat_pb2.MessageRole.ROLE_ASSISTANT: "assistant",
    chat_pb2.MessageRole.ROLE_SYSTEM: "system",
    chat_pb2.MessageRole.ROLE_DEVELOPER: "developer",
}
ROLE_VALUES = {name: value for value, name in ROLE_NAMES.items()}
ASSISTANT = chat_pb2.MessageRole.ROLE_ASSISTANT
FINISH_REASONS = {
    "stop": sample_pb2.FinishReason.REASON_STOP,
    "length": sample_pb2.FinishReason.REASON_MAX_LEN,
    "context": sample_pb2.FinishReason.REASON_MAX_CONTEXT,
}


def request_messages(
    request: Any, compaction: CompactionOpener | None = None
) -> list[ChatMessage]:
    """The conversation of a `GetCompletionsRequest`; text content only."""
    return proto_messages(request.messages, compaction)


def proto_messages(
    protos: Any, compaction: CompactionOpener | None = None
) -> list[ChatMessage]:
    """`Message` protos as the conversation; with `compaction` (which opens one), a message
    with `encrypted_content` (how `xai-sdk` sends a compaction back) stands for what it
    replaced, and the messages before it are dropped."""
    messages: list[ChatMessage] = []
    for index, message in enumerate(protos):
        if message.encrypted_content and compaction is not None:
            messages = compaction({"encrypted_content": message.encrypted_content},
                                  f"messages[{index}]")
            continue
        role = ROLE_NAMES.get(message.role)
        if role is None:
            name = chat_pb2.MessageRole.Name(message.role) if message.role in (
                chat_pb2.MessageRole.values()) else str(message.role)
            raise InvalidRequest(f"messages[{index}]: role {name} is not supported")
        texts: list[str] = []
        for part in message.content:
            if part.WhichOneof("content") != "text":
                raise InvalidRequest(f"messages[{index}]: only text content is supported")
            texts.append(part.text)
        messages.append(ChatMessage(role, "".join(texts)))
    return messages


def request_sampling(request: Any) -> SamplingParams:
    if request.HasField("n") and request.n != 1:
        raise InvalidRequest("only n=1 is supported")
    if request.HasField("temperature") and not 0.0 <= request.temperature <= 2.0:
        raise InvalidRequest("temperature must be between 0 and 2")
    if request.HasField("top_p") and not 0.0 < request.top_p <= 1.0:
        raise InvalidRequest("top_p must be in (0, 1]")
    if len(request.stop) > 8:
        raise InvalidRequest("stop takes at most 8 sequences")
    return SamplingParams(
        max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
        temperature=request.temperature if request.HasField("temperature") else 1.0,
        top_p=request.top_p if request.HasField("top_p") else 1.0,
        seed=request.seed if request.HasField("seed") else None,
        stop=tuple(request.stop),
    )


def timestamp(seconds: float | None = None) -> Timestamp:
    stamp = Timestamp()
    stamp.FromSeconds(int(time.time() if seconds is None else seconds))
    return stamp


def sampling_usage(usage: Usage, cost_in_usd_ticks: int | None = None) -> Any:
    fields: dict[str, Any] = {
        "completion_tokens": usage.completion_tokens,
        "reasoning_tokens": 0,
        "prompt_tokens": usage.prompt_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_text_tokens": usage.prompt_tokens,
        "cached_prompt_text_tokens": usage.cached_tokens,
        "prompt_image_tokens": 0,
    }
    if cost_in_usd_ticks is not None:
        fields["cost_in_usd_ticks"] = cost_in_usd_ticks
    return usage_pb2.SamplingUsage(**fields)


def completion_response(
    response_id: str,
    model: str,
    created: float,
    text: str,
    finish_reason: str,
    usage: Usage,
    cost_in_usd_ticks: int | None = None,
    engine_id: str = "",
) -> Any:
    """A whole answer; `engine_id` goes into `debug_output.sampler_tag` (which server sampled)."""
    return chat_pb2.GetChatCompletionResponse(
        id=response_id,
        model=model,
        created=timestamp(created),
        system_fingerprint="fp_warmroute",
        usage=sampling_usage(usage, cost_in_usd_ticks),
        debug_output=chat_pb2.DebugOutput(sampler_tag=engine_id),
        outputs=[
            chat_pb2.CompletionOutput(
                index=0,
                finish_reason=FINISH_REASONS.get(finish_reason, sample_pb2.REASON_STOP),
                message=chat_pb2.CompletionMessage(role=ASSISTANT, content=text),
            )
        ],
    )


def completion_chunk(
    response_id: str,
    model: str,
    created: float,
    content: str = "",
    finish_reason: str | None = None,
    usage: Usage | None = None,
    cost_in_usd_ticks: int | None = None,
    engine_id: str = "",
) -> Any:
    output = chat_pb2.CompletionOutputChunk(
        index=0, delta=chat_pb2.Delta(role=ASSISTANT, content=content)
    )
    if finish_reason is not None:
        output.finish_reason = FINISH_REASONS.get(finish_reason, sample_pb2.REASON_STOP)
    chunk = chat_pb2.GetChatCompletionChunk(
        id=response_id,
        model=model,
        created=timestamp(created),
        system_fingerprint="fp_warmroute",
        outputs=[output],
        debug_output=chat_pb2.DebugOutput(sampler_tag=engine_id),
    )
    if usage is not None:
        chunk.usage.CopyFrom(sampling_usage(usage, cost_in_usd_ticks))
    return chunk


def delta_chunk(template: Any, content: str) -> Any:
    """`template` (a `completion_chunk` without content) carrying `content`: copying it costs a
    quarter of building a chunk afresh (1.6 against 6.8 us), once per streamed delta."""
    chunk = chat_pb2.GetChatCompletionChunk()
    chunk.CopyFrom(template)
    chunk.outputs[0].delta.content = content
    return chunk


def compact_context_response(compacted: Compacted) -> Any:
    return chat_pb2.CompactContextResponse(
        id=compacted.compaction.id,
        encrypted_content=compacted.encrypted_content,
        dropped_message_count=compacted.compaction.dropped,
        usage=sampling_usage(compacted.usage, compacted.cost_in_usd_ticks),
    )
