"""The gateway's HTTP server: Chat Completions relayed to engines, plus health, models, metrics.

Thin routes over a `Gateway` (`warmroute.gateway.router`): read the body (413/415/400 as xAI
answers them), extract the routing features (400 for a bad key), place, relay. Every relayed
answer carries `x-warmroute-engine`. A client that goes away cancels its upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from warmroute.api.account_app import add_account_routes
from warmroute.api.auth import Authenticator, Caller
from warmroute.api.conversations import Conversations
from warmroute.api.disconnect import CLIENT_CLOSED_REQUEST, unless_disconnected
from warmroute.api.json_body import read_json_object
from warmroute.api.models import model_card
from warmroute.api.openapi import gateway_openapi
from warmroute.api.responses_app import ResponsesService, add_responses_routes
from warmroute.api.sse import ClosingStream
from warmroute.api.wire_errors import (
    handle_http_exception,
    handle_unexpected_error,
    handle_warmroute_error,
    sse_error_event,
)
from warmroute.api.xai_grpc import start_grpc_server, stop_grpc_server
from warmroute.config import GatewayConfig
from warmroute.errors import NotFound, StoreUnavailable, WarmrouteError
from warmroute.gateway.features import request_features
from warmroute.gateway.metering import Meter
from warmroute.gateway.metrics import CONTENT_TYPE
from warmroute.gateway.policies import RequestFeatures
from warmroute.gateway.proxy import Relayed, Streaming, UpstreamBroken
from warmroute.gateway.ratelimit import make_rate_limiter
from warmroute.gateway.resume import ClientView, encode_event, upstream_stream_body
from warmroute.gateway.router import Gateway
from warmroute.gateway.usage import usage_from
from warmroute.store import Store, open_store

log = logging.getLogger(__name__)


def create_gateway_app(config: GatewayConfig, gateway: Gateway | None = None) -> FastAPI:
    gw = gateway or Gateway(config)
    stores: list[Store] = []

    def store() -> Store:
        if not stores:
            raise StoreUnavailable("the store is not open")
        return stores[0]

    conversations = Conversations(gw, store, gw.config.response_ttl_s)
    auth = Authenticator(
        store, cache_secret(gw.config), gw.config.require_api_keys, gw.config.cache_isolation
    )
    meter = Meter(store, gw.config.prices, make_rate_limiter(gw.config.redis_url))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stores.append(await open_store(gw.config.store_url))
        await gw.start()
        purger = asyncio.create_task(purge_expired(store(), gw.config.purge_interval_s))
        grpc_server = None
        if gw.config.grpc_port:
            grpc_server = await start_grpc_server(
                conversations, auth, meter, gw.config.host, gw.config.grpc_port, local_tokenizer
            )
        try:
            yield
        finally:
            if grpc_server is not None:
                await stop_grpc_server(*grpc_server)
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
            await gw.stop()
            await meter.limiter.counters.close()
            await stores.pop().close()

    app = FastAPI(title="warmroute gateway", lifespan=lifespan)
    app.state.gateway = gw
    app.add_exception_handler(WarmrouteError, handle_warmroute_error)
    app.add_exception_handler(HTTPException, handle_http_exception)
    app.add_exception_handler(Exception, handle_unexpected_error)
    created = int(time.time())
    responses = ResponsesService(conversations, meter)
    add_responses_routes(app, responses, auth, gw.config.max_body_bytes)
    add_account_routes(app, auth, meter, gw)
    app.openapi = lambda: gateway_openapi(app)  # type: ignore[method-assign]

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        caller = await auth.caller(request.headers.get("authorization"))
        await meter.admit(caller)
        body = tenant_body(await read_json_object(request, gw.config.max_body_bytes), caller)
        features = request_features(request.headers, body, gw.indexes_prompts)
        view = ClientView.of(body) if body.get("stream") is True else None
        payload = gw.upstream_payload(upstream_stream_body(body) if view else body)
        opened = await unless_disconnected(
            request, place_and_forward(gw, features, payload, view), close_if_streaming
        )
        if opened is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        if isinstance(opened, Streaming):
            return relayed_stream(opened, StreamMeter(meter, caller, opened))
        return await metered_response(opened, meter, caller)

    @app.get("/health")
    async def health() -> JSONResponse:
        report = gw.health()
        return JSONResponse(report, status_code=200 if report["healthy_engines"] else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(m, created) for m in await gw.models()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id not in await gw.models():
            raise NotFound(f"The model {model_id!r} does not exist")
        return model_card(model_id, created)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gw.metrics.exposition(), media_type=CONTENT_TYPE)

    return app


def tenant_body(body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """The client's body with the caller's tenant salt in place of any salt it sent."""
    return {**body, "cache_salt": caller.cache_salt}


def cache_secret(config: GatewayConfig) -> bytes:
    """The server-side secret that tenant salts derive from: configured, or a random one kept
    in the data dir (mode 0600) so salts, and so caches, survive restarts."""
    if config.cache_secret:
        return config.cache_secret.encode()
    path = config.data_dir / "cache-secret"
    if not path.exists():
        config.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


async def metered_response(answer: Relayed, meter: Meter, caller: Caller) -> Response:
    """A whole JSON answer: its usage gets `cost_in_usd_ticks` and a ledger row (committed
    before the answer leaves)."""
    if answer.status != 200:
        return relayed_response(answer)
    data = json.loads(answer.body)
    usage = usage_from(data.get("usage") or {})
    model = str(data.get("model", ""))
    cost = await meter.record(caller, "chat.completions", model, answer.engine_id, usage)
    if isinstance(data.get("usage"), dict):
        data["usage"]["cost_in_usd_ticks"] = cost
    headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-type"}
    return JSONResponse(data, status_code=answer.status, headers=headers)


def local_tokenizer(model: str) -> Any:
    """The tokenizer of a built-in model or a model folder on this machine (for TokenizeText)."""
    from pathlib import Path

    from transformers import PreTrainedTokenizerFast

    from warmroute.config import warmroute_home
    from warmroute.engine.builtin import builtin_path, is_builtin

    if is_builtin(model):
        return PreTrainedTokenizerFast.from_pretrained(builtin_path(model, warmroute_home()))
    if Path(model).is_dir():
        return PreTrainedTokenizerFast.from_pretrained(model)
    raise NotFound(f"no tokenizer is available here for model {model!r}")


async def purge_expired(store: Store, interval_s: float) -> None:
    """Remove expired stored responses and deferred results now, then every `interval_s`."""
    while True:
        now = time.time()
        removed = await store.responses.purge_expired(now) + await store.deferred.purge_expired(now)
        if removed:
            log.info("purged %d expired stored records", removed)
        await asyncio.sleep(interval_s)


async def place_and_forward(
    gw: Gateway, features: RequestFeatures, payload: bytes, view: ClientView | None
) -> Relayed | Streaming:
    """Place and forward in one step of one task: the proxy takes the chosen engine's
    in-flight slot before this task yields, so concurrent placements see each other's load.
    A stream (`view`: what its client asked for) is resumed on another engine if its engine
    breaks mid-answer."""
    decision = gw.route(features)
    if view is not None:
        return await gw.proxy.open_stream(decision, payload, view, gw.config.max_resumes)
    return await gw.proxy.complete(decision, payload)


async def close_if_streaming(answer: Relayed | Streaming) -> None:
    if isinstance(answer, Streaming):
        await answer.aclose()


def relayed_response(answer: Relayed) -> Response:
    return Response(answer.body, status_code=answer.status, headers=answer.headers)


def relayed_stream(upstream: Streaming, metering: StreamMeter) -> ClosingStream:
    """An engine's stream relayed event by event (continued on another engine if its engine
    breaks); the upstream is closed (and its engine slot released) however the response ends:
    finished, client gone, or no engine left to continue (an error event ends the stream)."""
    return ClosingStream(
        relay(upstream, metering), upstream.aclose, status_code=upstream.status,
        headers=upstream.headers,
    )


class StreamMeter:
    """The ledger row of one streamed answer: written (and its cost put into the client's usage
    chunk) before the usage chunk or `[DONE]` leaves, or, for a stream cut off by its client or
    by a failure, with what was delivered when it ended."""

    def __init__(self, meter: Meter, caller: Caller, upstream: Streaming) -> None:
        self.meter = meter
        self.caller = caller
        self.upstream = upstream
        self.recorded = False

    async def before_sending(self, chunk: bytes) -> bytes:
        if self.recorded or (b'"usage"' not in chunk and not self.upstream.splice.done):
            return chunk  # the common case, checked without parsing: relayed as it came
        events = parse_events(chunk)
        final = next((e for e in events if isinstance(e, dict) and e.get("choices") == []
                      and "usage" in e), None)
        if final is None and not self.upstream.splice.done:
            return chunk
        cost = await self.record(final["usage"] if final else None)
        if final is None:
            return chunk
        final["usage"]["cost_in_usd_ticks"] = cost
        return b"".join(encode_event(e) if isinstance(e, dict) else e for e in events)

    async def record(self, usage: dict[str, Any] | None) -> int:
        self.recorded = True
        splice = self.upstream.splice
        counts = usage_from(usage or splice.final_usage())
        if counts.total_tokens == 0:
            return 0  # nothing reached an engine's output or the client: nothing to bill
        model = str((splice.template or {}).get("model", ""))
        return await self.meter.record(
            self.caller, "chat.completions", model, self.upstream.engine_id, counts
        )

    async def cut_off(self) -> None:
        """The stream ended early: bill what was delivered (shielded from cancellation)."""
        if not self.recorded:
            with anyio.CancelScope(shield=True):
                await self.record(None)


def parse_events(chunk: bytes) -> list[Any]:
    """SSE bytes as a list: each `data:` JSON event as a dict, anything else as its bytes."""
    out: list[Any] = []
    for block in chunk.split(b"\n\n"):
        if not block:
            continue
        payload = block[len(b"data: "):] if block.startswith(b"data: ") else None
        try:
            event = json.loads(payload) if payload and payload != b"[DONE]" else None
        except ValueError:
            event = None
        out.append(event if isinstance(event, dict) else block + b"\n\n")
    return out


async def relay(upstream: Streaming, metering: StreamMeter) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.chunks():
            yield await metering.before_sending(chunk)
    except UpstreamBroken as exc:
        yield sse_error_event(exc)
    finally:
        await metering.cut_off()
