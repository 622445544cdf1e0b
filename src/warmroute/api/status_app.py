"""The gateway's status routes: `GET /health` (can it serve), `GET /v1/models[/{id}]` (the
healthy engines' models) and `GET /metrics` (Prometheus exposition)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from starlette.responses import JSONResponse, Response

from warmroute.api.model_card import model_card
from warmroute.errors import NotFound
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.metrics import CONTENT_TYPE


def add_status_routes(app: FastAPI, gw: Gateway) -> None:
    created = int(time.time())

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
