"""The operators' live dashboard: `GET /dashboard` (one static page, its script and style, all
served from the package: no build step, no CDN) and the data it polls, `GET
/v1/admin/dashboard?window=&step=` (admin keys only): engines, recent activity in steps, and
every team's tokens, cached share and cost since the start of the UTC day.

The page asks for an admin key and keeps it in the tab's `sessionStorage` only; a strict
content security policy lets it run nothing but its own script and talk to nothing but its
gateway, and it writes every name it shows as text, never as markup.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from importlib import resources
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from warmroute.api.account_app import usage_report
from warmroute.errors import InvalidRequest
from warmroute.gateway.auth import Authenticator
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.metering import Meter
from warmroute.gateway.operations import activity, engine_report
from warmroute.gateway.timeline import DEFAULT_KEEP_S

ASSETS = {
    "/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
MAX_STEPS = 600


def asset(name: str) -> bytes:
    return resources.files("warmroute.api").joinpath("dashboard", name).read_bytes()


def start_of_day(now: float) -> float:
    day = dt.datetime.fromtimestamp(now, dt.UTC).date()
    return dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()


def add_dashboard_routes(app: FastAPI, gw: Gateway, auth: Authenticator, meter: Meter) -> None:
    for path, (name, media_type) in ASSETS.items():
        add_asset_route(app, path, asset(name), media_type)
    started = time.time()

    @app.get("/v1/admin/dashboard")
    async def dashboard_data(request: Request, window: float = 300.0,
                             step: float = 5.0) -> dict[str, Any]:
        await auth.admin(request.headers.get("authorization"))
        if not (1.0 <= step <= window <= DEFAULT_KEEP_S) or window / step > MAX_STEPS:
            raise InvalidRequest(f"need 1 <= step <= window <= {DEFAULT_KEEP_S:g} and at most "
                                 f"{MAX_STEPS} steps")
        now = time.time()
        health = gw.health()
        return {
            "generated_at": now,
            "gateway": {**health, "engines": len(gw.membership.engines),
                        "policy": gw.config.policy, "uptime_s": round(now - started, 1)},
            "engines": await engine_report(gw),
            # Off the event loop: 73 ms at 512 engines (the page asks every 2 s).
            "activity": await asyncio.to_thread(activity, gw, window, step),
            "tenants": await tenants_today(meter, now),
        }


def add_asset_route(app: FastAPI, path: str, body: bytes, media_type: str) -> None:
    async def serve_asset() -> Response:
        return Response(body, media_type=media_type, headers=PAGE_HEADERS)

    app.add_api_route(path, serve_asset, methods=["GET"], include_in_schema=False)


async def tenants_today(meter: Meter, now: float) -> dict[str, Any]:
    since = start_of_day(now)
    ledger = meter.store().usage
    rows = await ledger.summary(since, "team")
    by_model = await ledger.summary(since, "model")
    return {"since": since, **usage_report(rows, by_model, meter)}
