"""Extreme but well-formed requests for each surface of the gateway (issue 13): valid JSON (or
valid protobuf) that no engine may be asked to compute, each with the 4xx it must get.

Chat Completions bodies are the engine's own extreme cases (`tests/api/test_engine_faults_http`)
plus what the gateway itself reads; Responses and gRPC have their own fields to push.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import grpc
from xai_sdk.proto import chat_pb2

from tests.api.test_engine_faults_http import EXTREME, NESTED, raw

NUL_ID = "resp\x00onse"


@dataclass(frozen=True)
class Extreme:
    name: str
    body: bytes
    status: int = 400
    headers: dict[str, str] = field(default_factory=dict)


def chat_cases() -> list[Extreme]:
    cases = [Extreme(name, body) for name, body in EXTREME]
    cases += [
        Extreme('"stream": "true"', raw('"stream": "true"')),
        Extreme('"stream_options": 5', raw('"stream": true, "stream_options": 5')),
        Extreme("a tab in x-grok-conv-id", raw('"seed": 1'), headers={"x-grok-conv-id": "a\tb"}),
        Extreme("a body that is a list", b"[1, 2, 3]"),
        Extreme("messages that are a string", b'{"messages": "hi"}'),
        Extreme("max_tokens -1", raw('"max_tokens": -1').replace(b'"max_tokens": 8, ', b"")),
        Extreme("a lone surrogate in the model", raw('"model": "\\udc00"')),
    ]
    return cases


def responses_body(text: str) -> bytes:
    return ('{"input": "hello", ' + text + "}").encode()


def responses_cases() -> list[Extreme]:
    huge = json.dumps({"input": "route the cache " * 2**19}).encode()
    return [
        Extreme("input nested 50,000 deep", b'{"input": ' + NESTED.encode() + b"}"),
        Extreme("a lone surrogate in input", b'{"input": "a\\ud800b"}'),
        Extreme("a lone surrogate in instructions", responses_body('"instructions": "\\udbff"')),
        Extreme("5,000-digit max_output_tokens", responses_body(
            '"max_output_tokens": ' + "9" * 5000)),
        Extreme("max_output_tokens 2**64", responses_body(f'"max_output_tokens": {2**64}')),
        Extreme("max_output_tokens 0", responses_body('"max_output_tokens": 0')),
        Extreme("temperature 2.5", responses_body('"temperature": 2.5')),
        Extreme("temperature NaN", responses_body('"temperature": NaN')),
        Extreme("top_p 0", responses_body('"top_p": 0')),
        Extreme('"stream": "true"', responses_body('"stream": "true"')),
        Extreme('"store": "yes"', responses_body('"store": "yes"')),
        Extreme("an empty input list", b'{"input": []}'),
        Extreme("an image part", b'{"input": [{"type": "message", "role": "user", '
                                 b'"content": [{"type": "input_image"}]}]}'),
        Extreme("a NUL in previous_response_id", responses_body(
            '"previous_response_id": "a\\u0000b"'), 404),
        Extreme("a 300-character previous_response_id", responses_body(
            '"previous_response_id": "' + "r" * 300 + '"'), 404),
        Extreme("an 8 MB input", huge),
    ]


@dataclass(frozen=True)
class GrpcExtreme:
    name: str
    request: Any
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT


def grpc_request(**fields: Any) -> Any:
    message = chat_pb2.Message(role=chat_pb2.MessageRole.ROLE_USER,
                               content=[chat_pb2.Content(text=fields.pop("text", "hello"))])
    return chat_pb2.GetCompletionsRequest(messages=[message], model="builtin:tiny", **fields)


def grpc_cases() -> list[GrpcExtreme]:
    return [
        GrpcExtreme("temperature 3", grpc_request(temperature=3.0)),
        GrpcExtreme("temperature NaN", grpc_request(temperature=float("nan"))),
        GrpcExtreme("temperature inf", grpc_request(temperature=float("inf"))),
        GrpcExtreme("top_p 0", grpc_request(top_p=0.0)),
        GrpcExtreme("n 2**31 - 1", grpc_request(n=2**31 - 1)),
        GrpcExtreme("max_tokens 2**31 - 1", grpc_request(max_tokens=2**31 - 1)),
        GrpcExtreme("max_tokens -5", grpc_request(max_tokens=-5)),
        GrpcExtreme("nine stop strings", grpc_request(stop=["s"] * 9)),
        GrpcExtreme("four 200 KB stop strings", grpc_request(stop=["x" * 200_000] * 4)),
        GrpcExtreme("no messages", chat_pb2.GetCompletionsRequest(model="builtin:tiny")),
        GrpcExtreme("a tool message", chat_pb2.GetCompletionsRequest(messages=[chat_pb2.Message(
            role=chat_pb2.MessageRole.ROLE_TOOL, content=[chat_pb2.Content(text="x")])])),
        GrpcExtreme("an 8 MB message", grpc_request(text="route the cache " * 2**19)),
        GrpcExtreme("a NUL in previous_response_id", grpc_request(previous_response_id=NUL_ID),
                    grpc.StatusCode.NOT_FOUND),
    ]
