"""Operators' routes (admin keys only; a tenant's key gets 403, none 401): `GET
/v1/admin/engines`, each engine's health, load, queued prefill, cache size and use, hit rate
and the conversations homed there (`gateway/operations.py`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request

from warmroute.gateway.auth import Authenticator
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.operations import engine_report


def add_admin_routes(app: FastAPI, gw: Gateway, auth: Authenticator) -> None:
    @app.get("/v1/admin/engines")
    async def engines(request: Request) -> dict[str, Any]:
        await auth.admin(request.headers.get("authorization"))
        return {"object": "list", "data": await engine_report(gw)}
