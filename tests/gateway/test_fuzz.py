"""Fuzzing the gateway (issue 13, must show 3) over a real engine with a short context: every
HTTP route with schemathesis (50 generated requests each, and stateful runs that follow the
documented links from a created response to reading and deleting it), and the gRPC request
messages with hypothesis (well-formed protos with extreme values, and raw bytes). No answer is
a server error (5xx; gRPC UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS) and none takes 10 s."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import ResponseTimeExceeded
from xai_sdk.proto import chat_pb2, chat_pb2_grpc, deferred_pb2, tokenize_pb2, tokenize_pb2_grpc

from tests.gateway.harness import gateway_over
from tests.procs import free_port, start_engine
from warmroute.config import EngineEndpoint

pytestmark = pytest.mark.slow
EXAMPLES = 50
LIMIT_S = 10.0
SERVER_ERRORS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
                 grpc.StatusCode.DATA_LOSS, grpc.StatusCode.DEADLINE_EXCEEDED}
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    # A short context bounds what a generated request costs (96 tokens, prompt and reply).
    engine = start_engine(tmp_path_factory.mktemp("fuzz-engine"), "f1",
                          ["--max-model-len", "96"])
    try:
        engine.wait_healthy()
        grpc_port = free_port()
        endpoints = (EngineEndpoint.of(engine.url, "f1"),)
        with gateway_over(endpoints, data_dir=tmp_path_factory.mktemp("fuzz-gateway"),
                          grpc_port=grpc_port) as (url, _):
            yield url, grpc_port
    finally:
        engine.kill()


@pytest.fixture(scope="module")
def schema(gateway: tuple[str, int]) -> Any:
    return schemathesis.openapi.from_url(gateway[0] + "/openapi.json")


@schemathesis.check
def answered_in_time(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.elapsed > LIMIT_S:
        raise ResponseTimeExceeded(operation=case.operation.label,
                                   message=f"{response.elapsed:.1f} s", elapsed=response.elapsed,
                                   deadline=LIMIT_S)
    return None


CHECKS = [not_a_server_error, answered_in_time]


def test_every_route_meets_no_server_error_and_answers_in_time(schema: Any) -> None:
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 17
    for operation in operations:

        @given(case=operation.as_strategy())
        @FUZZ
        def exercise(case: Any) -> None:
            case.call_and_validate(checks=CHECKS, timeout=LIMIT_S + 5)

        exercise()


def test_stored_responses_followed_by_their_links(schema: Any) -> None:
    """Create, then read and delete what was created (the links of the OpenAPI document)."""
    stored = schema.include(path_regex=r"^/v1/responses(/\{response_id\})?$")

    class Machine(stored.as_state_machine()):  # type: ignore[misc]
        def validate_response(self, response: Any, case: Any, *args: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"timeout": LIMIT_S + 5}

    Machine.run(settings=settings(max_examples=EXAMPLES, stateful_step_count=4, deadline=None,
                                  database=None, suppress_health_check=list(HealthCheck)))


TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=64)
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
INT32 = st.integers(-(2**31), 2**31 - 1)
ROLES = st.sampled_from([*chat_pb2.MessageRole.values(), 99])


@st.composite
def completion_requests(draw: st.DrawFn) -> Any:
    messages = [chat_pb2.Message(role=draw(ROLES), content=[chat_pb2.Content(text=text)])
                for text in draw(st.lists(TEXT, max_size=3))]
    optional: dict[str, Any] = draw(st.fixed_dictionaries({}, optional={
        "n": INT32, "max_tokens": INT32, "seed": INT32, "temperature": FLOATS, "top_p": FLOATS,
        "frequency_penalty": FLOATS, "presence_penalty": FLOATS, "top_logprobs": INT32,
        "previous_response_id": st.one_of(TEXT, st.just("resp\x00onse")),
    }))
    return chat_pb2.GetCompletionsRequest(
        messages=messages, model=draw(st.sampled_from(["", "builtin:tiny", "nope", "\x00"])),
        stop=draw(st.lists(TEXT, max_size=10)), store_messages=draw(st.booleans()),
        logprobs=draw(st.booleans()), **optional)


def call(method: Any, request: Any, stream: bool = False) -> grpc.StatusCode:
    started = time.monotonic()
    try:
        reply = method(request, timeout=LIMIT_S + 5)
        if stream:
            list(reply)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
    elapsed = time.monotonic() - started
    assert code not in SERVER_ERRORS, (code, request)
    assert elapsed < LIMIT_S, (elapsed, request)
    return code


@pytest.fixture(scope="module")
def channel(gateway: tuple[str, int]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{gateway[1]}") as opened:
        yield opened


def test_grpc_completions_with_extreme_fields(channel: grpc.Channel) -> None:
    chat = chat_pb2_grpc.ChatStub(channel)

    @given(request=completion_requests(), stream=st.booleans())
    @FUZZ
    def exercise(request: Any, stream: bool) -> None:
        call(chat.GetCompletionChunk if stream else chat.GetCompletion, request, stream)

    exercise()


def test_grpc_ids_tokenize_and_raw_bytes(channel: grpc.Channel) -> None:
    chat, tokens = chat_pb2_grpc.ChatStub(channel), tokenize_pb2_grpc.TokenizeStub(channel)
    raw = channel.unary_unary("/xai_api.Chat/GetCompletion", request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)

    @given(text=TEXT, model=st.sampled_from(["", "builtin:tiny", "builtin:small", "/tmp"]),
           junk=st.binary(max_size=256))
    @FUZZ
    def exercise(text: str, model: str, junk: bytes) -> None:
        call(chat.GetStoredCompletion, chat_pb2.GetStoredCompletionRequest(response_id=text))
        call(chat.DeleteStoredCompletion,
             chat_pb2.DeleteStoredCompletionRequest(response_id=text))
        call(chat.GetDeferredCompletion, deferred_pb2.GetDeferredRequest(request_id=text))
        call(tokens.TokenizeText, tokenize_pb2.TokenizeTextRequest(text=text, model=model))
        call(raw, junk)

    exercise()
