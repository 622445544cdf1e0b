"""xAI's gRPC API on the gateway (`grpc.aio`), with the service modules `xai-sdk` ships.

`xai_api.Chat` (completions, streamed completions, deferred and stored completions, context
compaction: a message carrying a compaction's `encrypted_content` stands for it),
`xai_api.Models`, `xai_api.Auth` and `xai_api.Tokenize`; every other RPC answers UNIMPLEMENTED
(the generated servicer base classes do). Requests take the same path as HTTP ones: the routing
key comes from the `x-grok-conv-id` metadata, conversations go through `Conversations`, engines
through the proxy. Errors become gRPC status codes via `wire_errors`; nothing here answers
UNAVAILABLE for work that might have run, since the SDK retries UNAVAILABLE automatically.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.json_format import MessageToDict, ParseDict
from xai_sdk.proto import (
    auth_pb2,
    auth_pb2_grpc,
    chat_pb2,
    chat_pb2_grpc,
    deferred_pb2,
    models_pb2,
    models_pb2_grpc,
    tokenize_pb2,
    tokenize_pb2_grpc,
)

from warmroute.api import xai_grpc_wire as wire
from warmroute.api.compaction_app import compaction_opener
from warmroute.api.grpc_guard import RequestGuard
from warmroute.api.send_deadline import within_send_deadline
from warmroute.api.wire_errors import grpc_trailers, wire_error_for
from warmroute.errors import InvalidRequest, NotFound, WarmrouteError
from warmroute.gateway import engine_calls
from warmroute.gateway.auth import Authenticator, Caller
from warmroute.gateway.compaction import Compactor
from warmroute.gateway.conversations import Conversations, Turn
from warmroute.gateway.deferred import DeferredRuns, surface_of
from warmroute.gateway.features import CONV_ID_HEADER, validate_key
from warmroute.gateway.metering import Meter
from warmroute.gateway.stream_meter import SurfaceStreamMeter
from warmroute.gateway.tokenizers import tokenize_served
from warmroute.pricing import price_for
from warmroute.store import DeferredStatus
from warmroute.types import Usage

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 20 * 2**20
SERVER_OPTIONS = [
    # The SDK pings every 30 s, also with no call in flight: accept that, never GOAWAY it.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def status_code(exc: WarmrouteError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, wire_error_for(exc).grpc_code)


async def abort(context: grpc.aio.ServicerContext, exc: WarmrouteError) -> None:
    """End the call with the error's status (and `retry-after` metadata, as HTTP has it)."""
    await context.abort(status_code(exc), exc.message, grpc_trailers(exc))


def rpc(method: F) -> F:
    """Turn warmroute errors raised by a unary handler into the matching gRPC status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except WarmrouteError as exc:
            await abort(context, exc)

    return wrapper  # type: ignore[return-value]


def metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def conversation_key(context: grpc.aio.ServicerContext) -> str | None:
    key = metadata(context).get(CONV_ID_HEADER)
    return validate_key(key, CONV_ID_HEADER) if key else None


async def caller_of(auth: Authenticator, context: grpc.aio.ServicerContext) -> Caller:
    return await auth.caller(metadata(context).get("authorization"))


class ChatService(chat_pb2_grpc.ChatServicer):  # type: ignore[misc]
    def __init__(self, conversations: Conversations, auth: Authenticator, meter: Meter,
                 deferred: DeferredRuns, compactor: Compactor) -> None:
        self.conversations = conversations
        self.auth = auth
        self.meter = meter
        self.deferred = deferred  # shared with REST deferred completions
        self.compactor = compactor

    async def caller(self, context: grpc.aio.ServicerContext) -> Caller:
        caller = await caller_of(self.auth, context)
        await self.meter.admit(caller)
        return caller

    async def plan(
        self, request: Any, context: grpc.aio.ServicerContext, caller: Caller
    ) -> Turn:
        messages = wire.request_messages(request, compaction_opener(self.compactor, caller.team))
        wire.request_sampling(request)  # validate before anything runs
        previous = (  # a compaction message replaces the history before it
            request.previous_response_id if request.HasField("previous_response_id")
            and not any(m.encrypted_content for m in request.messages) else None
        )
        if not messages and previous is None:
            raise InvalidRequest("messages must not be empty")
        key = conversation_key(context)
        return await self.conversations.plan(caller.team, key, messages, previous,
                                             caller.cache_salt)

    def engine_body(
        self, request: Any, turn: Turn, caller: Caller, stream: bool
    ) -> dict[str, Any]:
        sampling = wire.request_sampling(request)
        body = engine_calls.chat_body(request.model or None, turn.messages, sampling, stream)
        return {**body, "cache_salt": caller.cache_salt}

    async def complete(self, request: Any, turn: Turn, caller: Caller,
                       background: bool = False) -> Any:
        """Run one turn to the end; meter it; store it when asked; return the response proto
        (`background`: a deferred completion's turn)."""
        gw = self.conversations.gw
        body = self.engine_body(request, turn, caller, False)
        answer = await engine_calls.complete(gw, turn.decision, body, background)
        response_id = str(uuid.uuid4())
        model = request.model or answer.model
        # priced and recorded as the model the engine served
        cost = await self.meter.record(caller, "grpc", answer.model or model, answer.engine_id,
                                       answer.usage)
        proto = wire.completion_response(
            response_id, model, time.time(), answer.text, answer.finish_reason, answer.usage,
            cost, engine_id=answer.engine_id,
        )
        await self.store_turn(request, turn, proto, answer.engine_id, answer.text)
        return proto

    async def store_turn(
        self, request: Any, turn: Turn, proto: Any, engine: str, text: str
    ) -> None:
        if request.store_messages:
            await self.conversations.save(
                turn, proto.id, proto.model, engine, text, {"grpc": MessageToDict(proto)}
            )

    @rpc
    async def GetCompletion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = await self.caller(context)
        turn = await self.plan(request, context, caller)
        return await self.complete(request, turn, caller)

    def GetCompletionChunk(self, request: Any, context: Any) -> AsyncIterator[Any]:
        timeout_s = self.conversations.gw.config.send_timeout_s
        return within_send_deadline(self.completion_chunks(request, context), timeout_s)

    async def completion_chunks(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[Any, None]:
        try:
            caller = await self.caller(context)
            turn = await self.plan(request, context, caller)
            gw = self.conversations.gw
            stream = await engine_calls.open_stream(
                gw, turn.decision, self.engine_body(request, turn, caller, True)
            )
        except WarmrouteError as exc:
            await abort(context, exc)
            return
        response_id, model, created = str(uuid.uuid4()), request.model, time.time()
        text: list[str] = []
        metering = SurfaceStreamMeter(self.meter, caller, "grpc", stream)
        template, sampled_by = None, ""
        try:
            async for item in engine_calls.stream_events(stream):
                if isinstance(item, engine_calls.TextDelta):
                    text.append(item.text)
                    if template is None or sampled_by != stream.engine_id:  # resumed
                        sampled_by = stream.engine_id
                        template = wire.completion_chunk(response_id, model, created,
                                                         engine_id=sampled_by)
                    yield wire.delta_chunk(template, item.text)
                    continue
                cost = await metering.done(item.usage)
                last = wire.completion_chunk(
                    response_id, model, created, "", item.finish_reason, item.usage, cost,
                    engine_id=stream.engine_id,
                )
                await self.store_turn(request, turn, final_response(last, "".join(text)),
                                      stream.engine_id, "".join(text))
                yield last
        except WarmrouteError as exc:
            await abort(context, exc)
        finally:
            await metering.cut_off()
            await stream.aclose()

    @rpc
    async def StartDeferredCompletion(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        caller = await self.caller(context)
        turn = await self.plan(request, context, caller)

        async def work() -> dict[str, Any]:
            return dict(MessageToDict(await self.complete(request, turn, caller,
                                                          background=True)))

        request_id = await self.deferred.start(caller.team, work)
        return deferred_pb2.StartDeferredResponse(request_id=request_id)

    @rpc
    async def GetDeferredCompletion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = await caller_of(self.auth, context)
        found = await self.deferred.get(request.request_id, caller.team)
        if found.result is not None and surface_of(found.result) != "grpc":
            raise InvalidRequest(f"Deferred request {request.request_id!r} was started over "
                                 "REST: read it at /v1/chat/deferred-completion/{request_id}")
        if found.status is DeferredStatus.FAILED:
            error = found.error or {}
            code = getattr(grpc.StatusCode, str(error.get("code")), grpc.StatusCode.INTERNAL)
            await context.abort(code, str(error.get("message", "the deferred request failed")))
        status = {
            DeferredStatus.PENDING: deferred_pb2.DeferredStatus.PENDING,
            DeferredStatus.DONE: deferred_pb2.DeferredStatus.DONE,
            DeferredStatus.EXPIRED: deferred_pb2.DeferredStatus.EXPIRED,
        }[found.status]
        answer = chat_pb2.GetDeferredCompletionResponse(status=status)
        if found.status is DeferredStatus.DONE and found.result is not None:
            answer.response.CopyFrom(ParseDict(found.result, chat_pb2.GetChatCompletionResponse()))
        return answer

    @rpc
    async def GetStoredCompletion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = await caller_of(self.auth, context)
        now = self.conversations.clock()
        stored = await self.conversations.store().responses.get(
            request.response_id, caller.team, now
        )
        if stored is None:
            raise NotFound(f"Response {request.response_id!r} was not found")
        if "grpc" in stored.response:
            return ParseDict(stored.response["grpc"], chat_pb2.GetChatCompletionResponse())
        # Stored through the Responses API: answer from what was stored of it.
        text = "".join(str(m.get("content", "")) for m in stored.output)
        usage = stored.response.get("usage") or {}
        return wire.completion_response(
            stored.id, stored.model, stored.created_at, text, "stop",
            Usage(int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)),
                  int((usage.get("input_tokens_details") or {}).get("cached_tokens", 0))),
        )

    @rpc
    async def DeleteStoredCompletion(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        caller = await caller_of(self.auth, context)
        if not await self.conversations.store().responses.delete(request.response_id, caller.team):
            raise NotFound(f"Response {request.response_id!r} was not found")
        return chat_pb2.DeleteStoredCompletionResponse(response_id=request.response_id)

    @rpc
    async def CompactContext(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = await self.caller(context)
        messages = wire.proto_messages(request.input,
                                       compaction_opener(self.compactor, caller.team))
        compacted = await self.compactor.compact(caller, conversation_key(context), messages,
                                                 None, request.model or None, "grpc.compact")
        return wire.compact_context_response(compacted)


def final_response(last_chunk: Any, text: str) -> Any:
    """The whole streamed answer as one response proto (what a stored completion returns)."""
    return wire.completion_response(
        last_chunk.id, last_chunk.model, last_chunk.created.seconds, text,
        {v: k for k, v in wire.FINISH_REASONS.items()}.get(last_chunk.outputs[0].finish_reason,
                                                           "stop"),
        Usage(last_chunk.usage.prompt_tokens, last_chunk.usage.completion_tokens,
              last_chunk.usage.cached_prompt_text_tokens),
        engine_id=last_chunk.debug_output.sampler_tag,
    )


class ModelsService(models_pb2_grpc.ModelsServicer):  # type: ignore[misc]
    def __init__(
        self, conversations: Conversations, auth: Authenticator, meter: Meter, created: float
    ) -> None:
        self.gw = conversations.gw
        self.auth = auth
        self.meter = meter
        self.created = created

    def model(self, name: str) -> Any:
        price = price_for(self.meter.prices, name)
        return models_pb2.LanguageModel(
            name=name, version="1", input_modalities=[1], output_modalities=[1],
            created=wire.timestamp(self.created), system_fingerprint="fp_warmroute",
            prompt_text_token_price=price.prompt_text_token_price,
            cached_prompt_token_price=price.cached_prompt_token_price,
            completion_text_token_price=price.completion_text_token_price,
        )

    @rpc
    async def ListLanguageModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await caller_of(self.auth, context)
        return models_pb2.ListLanguageModelsResponse(
            models=[self.model(name) for name in await self.gw.models()]
        )

    @rpc
    async def GetLanguageModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await caller_of(self.auth, context)
        if request.name not in await self.gw.models():
            raise NotFound(f"The model {request.name!r} does not exist")
        return self.model(request.name)


class AuthService(auth_pb2_grpc.AuthServicer):  # type: ignore[misc]
    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    @rpc
    async def get_api_key_info(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = await caller_of(self.auth, context)
        return auth_pb2.ApiKey(
            redacted_api_key=caller.redacted, user_id=caller.team, name=caller.name,
            team_id=caller.team, api_key_id=caller.key_id,
            acls=["api-key:model:*", "api-key:endpoint:*"],
            create_time=wire.timestamp(caller.created_at),
            modify_time=wire.timestamp(caller.created_at),
        )


class TokenizeService(tokenize_pb2_grpc.TokenizeServicer):  # type: ignore[misc]
    """Tokenizes with the tokenizer of a model the gateway serves (`tokenize_served`), rate
    limited like any request."""

    def __init__(self, conversations: Conversations, auth: Authenticator, meter: Meter,
                 tokenizer_for: Callable[[str], Any]) -> None:
        self.gw = conversations.gw
        self.auth = auth
        self.meter = meter
        self.tokenizer_for = tokenizer_for

    @rpc
    async def TokenizeText(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self.meter.admit(await caller_of(self.auth, context))
        model, pieces = await tokenize_served(await self.gw.models(), request.model or None,
                                              request.text, self.tokenizer_for)
        tokens = [tokenize_pb2.Token(token_id=p.token_id, string_token=p.string_token,
                                     token_bytes=p.token_bytes) for p in pieces]
        return tokenize_pb2.TokenizeTextResponse(tokens=tokens, model=model)


async def start_grpc_server(
    conversations: Conversations,
    auth: Authenticator,
    meter: Meter,
    host: str,
    port: int,
    tokenizer_for: Callable[[str], Any],
    deferred: DeferredRuns,
    compactor: Compactor,
) -> grpc.aio.Server:
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[RequestGuard()])
    chat = ChatService(conversations, auth, meter, deferred, compactor)
    chat_pb2_grpc.add_ChatServicer_to_server(chat, server)
    models = ModelsService(conversations, auth, meter, time.time())
    models_pb2_grpc.add_ModelsServicer_to_server(models, server)
    auth_pb2_grpc.add_AuthServicer_to_server(AuthService(auth), server)
    tokenize = TokenizeService(conversations, auth, meter, tokenizer_for)
    tokenize_pb2_grpc.add_TokenizeServicer_to_server(tokenize, server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server


async def stop_grpc_server(server: grpc.aio.Server) -> None:
    await server.stop(grace=2.0)

