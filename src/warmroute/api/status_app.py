"""The gateway's status routes: `GET /health` (public: can it serve, and nothing more),
`GET /v1/models[/{id}]` (the healthy engines' models, for any caller with a key) and
`GET /metrics` (Prometheus exposition: admin keys only, as a bearer token, unless the gateway
runs with `--public-metrics` on a private network)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from warmroute.api.model_card import model_card
from warmroute.errors import NotFound
from warmroute.gateway.auth import Authenticator
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.metrics import CONTENT_TYPE


def add_status_routes(app: FastAPI, gw: Gateway, auth: Authenticator) -> None:
    created = int(time.time())

    @app.get("/health")
    async def health() -> JSONResponse:
        report = gw.health()
        return JSONResponse(report, status_code=200 if report["healthy_engines"] else 503)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        await auth.caller(request.headers.get("authorization"))
        return {"object": "list", "data": [model_card(m, created) for m in await gw.models()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        await auth.caller(request.headers.get("authorization"))
        if model_id not in await gw.models():
            raise NotFound(f"The model {model_id!r} does not exist")
        return model_card(model_id, created)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if not gw.config.public_metrics:
            await auth.admin(request.headers.get("authorization"))
        # Written on a worker thread: at 512 engines (3,600 series) it takes 47 ms, which on the
        # event loop would hold up every request in flight at each scrape.
        body = await asyncio.to_thread(gw.metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE)
