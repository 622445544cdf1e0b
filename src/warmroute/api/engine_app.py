"""The engine's HTTP server: OpenAI/xAI Chat Completions over one `Engine`, plus health,
models, Prometheus metrics and cache statistics. Thin routes; the engine does the work.

Opt-in request fields, for a gateway that resumes a broken stream on another engine (other
OpenAI-compatible servers ignore them or, like vLLM, know the first two):
- `return_token_ids: true`: each choice carries `token_ids`, in a stream exactly the tokens
  whose text its chunk releases (with any whose text is still held back);
- `stream_options.continuous_usage_stats: true`: every chunk carries the usage so far;
- `continue_token_ids: [...]` (with `continue_final_message: true`): the ids the final assistant
  message was generated as; the engine continues from those very ids, releasing first any of
  their text beyond the message's content, and accepts `max_tokens: 0` (only that text left).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from warmroute.api import chat_completions as cc
from warmroute.api.bearer_guard import BearerGuard
from warmroute.api.disconnect import CLIENT_CLOSED_REQUEST, unless_disconnected
from warmroute.api.json_body import DEFAULT_MAX_BODY_BYTES, parse_json_object, read_body
from warmroute.api.model_card import model_card
from warmroute.api.sse import SSE_HEADERS, SSE_MEDIA_TYPE
from warmroute.api.wire_errors import (
    handle_http_exception,
    handle_unexpected_error,
    handle_warmroute_error,
    sse_error_event,
)
from warmroute.engine.engine import Delta, Engine, Finished, Prepared
from warmroute.errors import NotFound, WarmrouteError
from warmroute.sse import DONE, sse_data
from warmroute.types import Usage


def create_engine_app(
    engine: Engine, engine_id: str, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    api_key: str | None = None,
) -> FastAPI:
    """`api_key`: when set, every route but `/health` needs `Authorization: Bearer <it>`."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="warmroute engine", lifespan=lifespan)
    if api_key:
        app.add_middleware(BearerGuard, api_key=api_key)
    app.add_exception_handler(WarmrouteError, handle_warmroute_error)
    app.add_exception_handler(HTTPException, handle_http_exception)
    app.add_exception_handler(Exception, handle_unexpected_error)
    add_engine_status_routes(app, engine, engine_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        raw = await read_body(request, max_body_bytes)
        parsed, prepared = await asyncio.to_thread(parse_and_prepare, engine, raw)
        completion_id = str(uuid.uuid4())
        headers = {"x-warmroute-engine": engine_id}
        if parsed.stream:
            body = stream_chunks(engine, prepared, completion_id, ChunkOptions.of(parsed))
            return StreamingResponse(
                body, media_type=SSE_MEDIA_TYPE, headers={**SSE_HEADERS, **headers}
            )
        answer = await unless_disconnected(
            request, collect(engine, prepared, completion_id, parsed.return_token_ids)
        )
        if answer is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return JSONResponse(answer, headers=headers)

    return app


def parse_and_prepare(engine: Engine, body: bytes) -> tuple[cc.ChatCompletionBody, Prepared]:
    """The CPU-bound start of a request (JSON, validation, chat template, tokenizing), run on
    a worker thread so health probes and running streams are answered meanwhile."""
    parsed = cc.parse_body(parse_json_object(body))
    if parsed.model is not None and parsed.model != engine.model_name:
        raise NotFound(f"The model {parsed.model!r} does not exist")
    return parsed, engine.prepare(cc.to_chat_request(parsed), parsed.continue_token_ids)


def add_engine_status_routes(app: FastAPI, engine: Engine, engine_id: str) -> None:
    """`/health` (with the cache size the gateway's prefix index is sized from), `/v1/models`,
    `/cache` (cache statistics) and `/metrics`."""
    registry = CollectorRegistry()
    registry.register(EngineCollector(engine))
    created = int(time.time())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "engine_id": engine_id, "model": engine.model_name,
                "cache_tokens": engine.cache_tokens, "chars_per_token": engine.chars_per_token,
                "scheduling_policy": engine.scheduler.policy}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(engine.model_name, created)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != engine.model_name:
            raise NotFound(f"The model {model_id!r} does not exist")
        return model_card(engine.model_name, created)

    @app.get("/cache")
    async def cache_stats() -> dict[str, Any]:
        return {"engine_id": engine_id, **engine.stats()}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")


async def collect(
    engine: Engine, prepared: Prepared, completion_id: str, return_token_ids: bool = False
) -> dict[str, Any]:
    parts: list[str] = []
    ids: list[int] = []
    async with contextlib.aclosing(engine.generate(prepared, completion_id)) as events:
        async for event in events:
            if isinstance(event, Delta):
                parts.append(event.text)
                ids.extend(event.token_ids)
            else:
                return cc.completion_json(
                    completion_id, int(time.time()), engine.model_name, "".join(parts),
                    event.finish_reason, event.usage, ids if return_token_ids else None,
                )
    raise RuntimeError("generation ended without a finish event")


@dataclass(frozen=True)
class ChunkOptions:
    """What a stream's chunks carry besides text: the final usage chunk, usage so far on every
    chunk (`continuous_usage_stats`) and each delta's token ids (`return_token_ids`)."""

    include_usage: bool = False
    continuous_usage: bool = False
    token_ids: bool = False

    @staticmethod
    def of(parsed: cc.ChatCompletionBody) -> ChunkOptions:
        options = parsed.stream_options
        return ChunkOptions(
            include_usage=bool(options and options.include_usage),
            continuous_usage=bool(options and options.continuous_usage_stats),
            token_ids=parsed.return_token_ids,
        )


async def stream_chunks(
    engine: Engine, prepared: Prepared, completion_id: str, options: ChunkOptions
) -> AsyncIterator[bytes]:
    created = int(time.time())
    model = engine.model_name

    def chunk(**fields: Any) -> bytes:
        return sse_data(cc.chunk_json(completion_id, created, model, **fields))

    # With continuous usage the role chunk carries the prompt: a client that leaves after it
    # is billed the prompt the engine admitted.
    prompt = Usage(len(prepared.prompt_ids), 0, 0) if options.continuous_usage else None
    yield chunk(delta={"role": "assistant"}, usage_so_far=prompt)
    try:
        async with contextlib.aclosing(engine.generate(prepared, completion_id)) as events:
            async for event in events:
                if isinstance(event, Delta):
                    yield chunk(
                        delta={"content": event.text},
                        token_ids=list(event.token_ids) if options.token_ids else None,
                        usage_so_far=event.usage if options.continuous_usage else None,
                    )
                elif isinstance(event, Finished):
                    yield chunk(
                        delta={}, finish_reason=event.finish_reason,
                        usage_so_far=event.usage if options.continuous_usage else None,
                    )
                    if options.include_usage:
                        yield chunk(usage=event.usage)
    except WarmrouteError as exc:
        yield sse_error_event(exc)
        return
    yield DONE


class EngineCollector:
    """Prometheus metrics read from the engine's statistics at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Any:
        stats = self.engine.stats()
        for name, key, doc in (
            ("prompt_tokens", "prompt_tokens", "Prompt tokens received"),
            ("cached_tokens", "cached_tokens", "Prompt tokens served from the prefix cache"),
            ("generated_tokens", "generated_tokens", "Tokens generated"),
            ("cache_evictions", "evictions", "Cached blocks evicted"),
            ("requests_finished", "requests_finished", "Requests finished"),
        ):
            yield CounterMetricFamily(f"warmroute_engine_{name}", doc, value=stats[key])
        for name, key, doc in (
            ("cache_blocks_used", "blocks_used", "Blocks referenced by running requests"),
            ("cache_blocks_free", "blocks_free", "Blocks free or evictable"),
            ("cache_blocks_cached", "blocks_cached", "Blocks holding reusable KV"),
            ("running_requests", "running", "Requests being decoded"),
            ("waiting_requests", "waiting", "Requests waiting for admission"),
        ):
            yield GaugeMetricFamily(f"warmroute_engine_{name}", doc, value=stats[key])
        yield self._batch_histogram()

    def _batch_histogram(self) -> HistogramMetricFamily:
        counts = dict(self.engine.decode_batch_counts)
        buckets: list[tuple[str, float]] = []
        for bound in (1, 2, 4, 8, 16, 32, 64):
            buckets.append((str(bound), float(sum(c for s, c in counts.items() if s <= bound))))
        total = sum(counts.values())
        buckets.append(("+Inf", float(total)))
        return HistogramMetricFamily(
            "warmroute_engine_decode_batch_size",
            "Sequences per batched decode step",
            buckets=buckets,
            sum_value=float(sum(s * c for s, c in counts.items())),
        )
