"""A gRPC server interceptor: a request whose bytes are not its message is INVALID_ARGUMENT.

grpc-python answers UNKNOWN when a request cannot be decoded (a string field with bad UTF-8, a
corrupt wire format): the fault is the caller's, so the interceptor decodes requests itself and
answers INVALID_ARGUMENT for those, before any handler runs. Nothing else changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

Decode = Callable[[bytes], Any]


async def decoded(decode: Decode, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
    try:
        return decode(raw)
    except DecodeError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"the request is not a valid message: {exc}")


def guard_unary(behaviour: Callable[..., Awaitable[Any]], decode: Decode) -> Any:
    async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        return await behaviour(await decoded(decode, raw, context), context)

    return unary


def guard_stream(behaviour: Callable[..., AsyncIterator[Any]], decode: Decode) -> Any:
    async def stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for item in behaviour(await decoded(decode, raw, context), context):
            yield item

    return stream


class RequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode, serialize = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                guard_unary(handler.unary_unary, decode), response_serializer=serialize)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                guard_stream(handler.unary_stream, decode), response_serializer=serialize)
        return handler  # streaming requests: none among xAI's services here
