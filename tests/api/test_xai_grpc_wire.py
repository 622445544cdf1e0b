"""gRPC wire translation, checked with the SDK's own Response class reading our protos."""

from __future__ import annotations

import pytest
from xai_sdk.chat import Response
from xai_sdk.proto import chat_pb2, sample_pb2

from warmroute.api.xai_grpc_wire import (
    completion_chunk,
    completion_response,
    request_messages,
    request_sampling,
)
from warmroute.errors import InvalidRequest
from warmroute.types import ChatMessage, Usage

R = chat_pb2.MessageRole


def text_message(role: int, text: str) -> chat_pb2.Message:
    return chat_pb2.Message(role=role, content=[chat_pb2.Content(text=text)])


def test_request_messages_and_sampling() -> None:
    request = chat_pb2.GetCompletionsRequest(
        model="m", n=1, max_tokens=7, temperature=0.0, stop=["\n\n"],
        messages=[text_message(R.ROLE_SYSTEM, "sys"), text_message(R.ROLE_USER, "hi"),
                  text_message(R.ROLE_ASSISTANT, "yo"), text_message(R.ROLE_DEVELOPER, "dev")],
    )
    assert request_messages(request) == [
        ChatMessage("system", "sys"), ChatMessage("user", "hi"),
        ChatMessage("assistant", "yo"), ChatMessage("developer", "dev")]
    sampling = request_sampling(request)
    assert (sampling.max_tokens, sampling.temperature, sampling.stop) == (7, 0.0, ("\n\n",))
    defaults = request_sampling(chat_pb2.GetCompletionsRequest(model="m"))
    assert (defaults.max_tokens, defaults.temperature, defaults.seed) == (None, 1.0, None)


@pytest.mark.parametrize("request_", [
    chat_pb2.GetCompletionsRequest(messages=[text_message(R.ROLE_TOOL, "x")]),
    chat_pb2.GetCompletionsRequest(messages=[text_message(R.INVALID_ROLE, "x")]),
    chat_pb2.GetCompletionsRequest(messages=[chat_pb2.Message(role=R.ROLE_USER, content=[
        chat_pb2.Content(image_url={"image_url": "http://127.0.0.1/a"})])]),
])
def test_unsupported_messages(request_: chat_pb2.GetCompletionsRequest) -> None:
    with pytest.raises(InvalidRequest):
        request_messages(request_)


@pytest.mark.parametrize("request_", [
    chat_pb2.GetCompletionsRequest(n=2),
    chat_pb2.GetCompletionsRequest(temperature=3.0),
    chat_pb2.GetCompletionsRequest(top_p=0.0),
    chat_pb2.GetCompletionsRequest(stop=[str(i) for i in range(9)]),
])
def test_bad_sampling(request_: chat_pb2.GetCompletionsRequest) -> None:
    with pytest.raises(InvalidRequest):
        request_sampling(request_)


def test_sdk_reads_our_response() -> None:
    proto = completion_response("r1", "m", 1700000000, "hello", "length", Usage(40, 5, 32), 123)
    response = Response(proto, 0)
    assert response.content == "hello"
    assert response.id == "r1"
    assert response.finish_reason == "REASON_MAX_LEN"
    assert response.usage.cached_prompt_text_tokens == 32
    assert response.usage.prompt_text_tokens == 40
    assert response.usage.total_tokens == 45
    assert response.usage.cost_in_usd_ticks == 123


def test_sdk_accumulates_our_chunks() -> None:
    response = Response(chat_pb2.GetChatCompletionResponse(), 0)
    for piece in ("he", "llo"):
        response.process_chunk(completion_chunk("r1", "m", 1700000000, piece))
    response.process_chunk(
        completion_chunk("r1", "m", 1700000000, "", "stop", Usage(10, 2, 0))
    )
    assert response.content == "hello"
    assert response.finish_reason == "REASON_STOP"
    assert response.usage.completion_tokens == 2
    assert response.id == "r1"
    assert sample_pb2.FinishReason.Name(response.proto.outputs[0].finish_reason) == "REASON_STOP"
