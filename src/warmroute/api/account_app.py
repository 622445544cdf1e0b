"""Account routes on the gateway: the caller's API key (`GET /v1/api-key`), models with prices
(`GET /v1/language-models[/{id}]`, xAI's units: cents per 100 M tokens), and the usage ledger
of the caller's team (`GET /v1/usage?since=&by=`): tokens, cached share, cost, what caching
saved. An admin key may ask for any team's (`team=NAME`) or every team's (`team=*`)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request

from warmroute.errors import InvalidRequest, NotFound
from warmroute.gateway.auth import Authenticator, Caller
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.metering import Meter
from warmroute.pricing import price_for
from warmroute.store import UsageTotals

GROUPINGS = ("key", "model", "day", "team")
EVERY_TEAM = "*"
DEFAULT_USAGE_WINDOW_S = 30 * 24 * 3600.0


def iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat().replace("+00:00", "Z")


def api_key_info(caller: Caller) -> dict[str, Any]:
    created = iso(caller.created_at)
    return {
        "redacted_api_key": caller.redacted,
        "user_id": caller.team,
        "name": caller.name,
        "create_time": created,
        "modify_time": created,
        "modified_by": caller.team,
        "team_id": caller.team,
        "acls": ["api-key:model:*", "api-key:endpoint:*"],
        "api_key_id": caller.key_id,
        "team_blocked": False,
        "api_key_blocked": False,
        "api_key_disabled": False,
    }


def language_model(name: str, meter: Meter, created: int) -> dict[str, Any]:
    price = price_for(meter.prices, name)
    return {
        "id": name,
        "fingerprint": "fp_warmroute",
        "created": created,
        "object": "model",
        "owned_by": "warmroute",
        "version": "1",
        "input_modalities": ["text"],
        "output_modalities": ["text"],
        "prompt_text_token_price": price.prompt_text_token_price,
        "cached_prompt_text_token_price": price.cached_prompt_token_price,
        "prompt_image_token_price": 0,
        "completion_text_token_price": price.completion_text_token_price,
        "search_price": 0,
        "aliases": [],
    }


def usage_report(
    rows: Sequence[UsageTotals], by_model: Sequence[UsageTotals], meter: Meter
) -> dict[str, Any]:
    """Rows plus totals; what caching saved is priced per model, so it is exact."""
    saved = sum(price_for(meter.prices, r.group or "").saved_ticks(r.cached_tokens)
                for r in by_model)
    prompt = sum(r.prompt_tokens for r in rows)
    cached = sum(r.cached_tokens for r in rows)
    return {
        "groups": [
            {
                "group": r.group,
                "requests": r.requests,
                "prompt_tokens": r.prompt_tokens,
                "cached_tokens": r.cached_tokens,
                "completion_tokens": r.completion_tokens,
                "cached_share": r.cached_tokens / r.prompt_tokens if r.prompt_tokens else 0.0,
                "cost_in_usd_ticks": r.cost_in_usd_ticks,
            }
            for r in rows
        ],
        "total": {
            "requests": sum(r.requests for r in rows),
            "prompt_tokens": prompt,
            "cached_tokens": cached,
            "completion_tokens": sum(r.completion_tokens for r in rows),
            "cached_share": cached / prompt if prompt else 0.0,
            "cost_in_usd_ticks": sum(r.cost_in_usd_ticks for r in rows),
            "saved_by_caching_in_usd_ticks": saved,
        },
    }


def add_account_routes(app: FastAPI, auth: Authenticator, meter: Meter, gw: Gateway) -> None:
    created = int(time.time())

    async def caller_of(request: Request) -> Caller:
        return await auth.caller(request.headers.get("authorization"))

    @app.get("/v1/api-key")
    async def api_key(request: Request) -> dict[str, Any]:
        return api_key_info(await caller_of(request))

    @app.get("/v1/language-models")
    async def language_models(request: Request) -> dict[str, Any]:
        await caller_of(request)
        return {"models": [language_model(m, meter, created) for m in await gw.models()]}

    @app.get("/v1/language-models/{model_id:path}")
    async def one_language_model(model_id: str, request: Request) -> dict[str, Any]:
        await caller_of(request)
        if model_id not in await gw.models():
            raise NotFound(f"The model {model_id!r} does not exist")
        return language_model(model_id, meter, created)

    @app.get("/v1/usage")
    async def usage(request: Request, since: float | None = None, by: str = "model",
                    team: str | None = None) -> Any:
        authorization = request.headers.get("authorization")
        caller = await caller_of(request)
        if team is not None and team != caller.team:
            caller = await auth.admin(authorization)  # another team's bill: operators only
        if by not in GROUPINGS:
            raise InvalidRequest(f"by must be one of {', '.join(GROUPINGS)}")
        start = since if since is not None else time.time() - DEFAULT_USAGE_WINDOW_S
        wanted = team or caller.team
        owner = None if wanted == EVERY_TEAM else wanted
        ledger = meter.store().usage
        rows = await ledger.summary(start, by, owner=owner)  # type: ignore[arg-type]
        by_model = rows if by == "model" else await ledger.summary(start, "model", owner=owner)
        return {"team": wanted, "since": start, "by": by, **usage_report(rows, by_model, meter)}
