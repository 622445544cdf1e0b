"""Operators and tenants (issue 15, Must show 1 and 4), through a real gateway over a real engine:
admin routes answer admin keys only (403 for a tenant's key, 401 without one), the public
`/health` says whether the gateway can serve and nothing else, `--public-metrics` opens
`/metrics` and nothing more, and the anonymous tenant of `--no-api-keys` shares nothing with a
real team named as the anonymous tenant used to be."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.harness import (
    MODEL,
    Fleet,
    cached_tokens,
    chat_body,
    gateway_over,
    opening,
)
from tests.gateway.test_tenancy import make_keys
from warmroute.errors import InvalidRequest
from warmroute.gateway.auth import ANONYMOUS_TEAM, create_key
from warmroute.store import open_store

ADMIN_ROUTES = ["/metrics", "/v1/admin/engines", "/v1/admin/dashboard",
                "/v1/usage?team=other", "/v1/usage?team=*"]


def get(url: str, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(url, headers=headers, timeout=30)


@pytest.fixture
def keyed(fleet: Fleet, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    keys = asyncio.run(make_keys(tmp_path, admin={"team": "ops", "admin": True},
                                 tenant={"team": "team-a"}, other={"team": "other"}))
    with gateway_over(fleet.endpoints()[:2], data_dir=tmp_path, require_api_keys=True,
                      public_metrics=False) as (url, _):
        yield url, keys


def test_admin_routes_refuse_tenants_and_strangers_and_answer_admins(
    keyed: tuple[str, dict[str, str]],
) -> None:
    url, keys = keyed
    for route in ADMIN_ROUTES:
        missing, tenant, admin = get(url + route), get(url + route, keys["tenant"]), get(
            url + route, keys["admin"])
        assert (route, missing.status_code, tenant.status_code, admin.status_code) == (
            route, 401, 403, 200)
        assert tenant.json() == {"code": "The caller does not have permission",
                                 "error": "This route needs an admin API key."}
    assert get(url + "/v1/usage", keys["tenant"]).json()["team"] == "team-a"
    assert get(url + "/v1/usage?team=team-a", keys["tenant"]).status_code == 200


def test_admin_sees_engines_metrics_and_every_team(keyed: tuple[str, dict[str, str]],
                                                  fleet: Fleet) -> None:
    url, keys = keyed
    for who in ("tenant", "other"):
        answer = httpx.post(url + "/v1/chat/completions", json=chat_body(opening(f"hi {who}")),
                            headers={"authorization": f"Bearer {keys[who]}"}, timeout=60)
        assert answer.status_code == 200
    engines = get(url + "/v1/admin/engines", keys["admin"]).json()["data"]
    assert [e["id"] for e in engines] == fleet.ids[:2]
    assert [e["url"] for e in engines] == [fleet.url(i) for i in fleet.ids[:2]]
    assert sum(e["requests"] for e in engines) == 2
    assert all(e["healthy"] and e["cache"]["blocks_total"] > 0 for e in engines)
    assert set(engines[0]) >= {"in_flight", "queued_prefill", "waiting", "hit_rate",
                               "conversations"}
    assert [(e["scheduling_policy"], e["takes_priority"]) for e in engines] == [
        ("fcfs", None), ("fcfs", None)]  # as their health says; none ranked: engine_priority off
    every = get(url + "/v1/usage?team=*&by=team", keys["admin"]).json()
    assert [(g["group"], g["requests"]) for g in every["groups"]] == [("other", 1), ("team-a", 1)]
    one = get(url + "/v1/usage?team=other", keys["admin"]).json()
    assert (one["team"], one["total"]["requests"]) == ("other", 1)
    metrics = get(url + "/metrics", keys["admin"]).text
    assert "warmroute_gateway_first_token_seconds_count 2.0" in metrics


def test_public_health_and_models_need_what_they_should(keyed: tuple[str, dict[str, str]],
                                                       fleet: Fleet) -> None:
    url, keys = keyed
    health = get(url + "/health")
    assert health.json() == {"status": "ok", "healthy_engines": 2}
    assert "127.0.0.1" not in health.text and "e1" not in health.text
    assert get(url + "/v1/models").status_code == 401
    assert get(url + f"/v1/models/{MODEL}").status_code == 401
    listed = get(url + "/v1/models", keys["tenant"]).json()
    assert [m["id"] for m in listed["data"]] == [MODEL]
    page = get(url + "/dashboard")  # the page itself holds no data: it asks for a key
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert get(url + "/dashboard/dashboard.js").status_code == 200


def test_public_metrics_opens_metrics_only(fleet: Fleet, tmp_path: Path) -> None:
    keys = asyncio.run(make_keys(tmp_path, tenant={"team": "team-a"}))
    with gateway_over(fleet.endpoints()[:1], data_dir=tmp_path, require_api_keys=True,
                      public_metrics=True) as (url, _):
        assert get(url + "/metrics").status_code == 200
        assert "warmroute_gateway_routing_decisions_total" in get(url + "/metrics").text
        for route in ADMIN_ROUTES[1:]:
            assert (route, get(url + route).status_code,
                    get(url + route, keys["tenant"]).status_code) == (route, 401, 403)


def test_team_names_are_checked_and_the_anonymous_one_is_not_a_team_name(tmp_path: Path) -> None:
    async def attempt(team: str) -> None:
        store = await open_store(str(tmp_path / "w.db"))
        try:
            await create_key(store, "n", team)
        finally:
            await store.close()

    for bad in (ANONYMOUS_TEAM, "", "has space", "a/b", "x" * 65, "-leading"):
        with pytest.raises(InvalidRequest, match="team name"):
            asyncio.run(attempt(bad))
    asyncio.run(attempt("default"))


def post_as(url: str, path: str, body: dict[str, Any], key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + path, json=body, headers=headers, timeout=60)


def test_a_team_named_like_the_old_anonymous_tenant_shares_nothing_with_anonymous_callers(
    fleet: Fleet, tmp_path: Path,
) -> None:
    keys = asyncio.run(make_keys(tmp_path, default={"team": "default"}))
    prompt = chat_body(opening("a question only the anonymous callers asked"))
    with gateway_over(fleet.endpoints()[:1], data_dir=tmp_path) as (url, _):  # --no-api-keys
        first = post_as(url, "/v1/chat/completions", prompt, None)
        again = post_as(url, "/v1/chat/completions", prompt, None)
        team = post_as(url, "/v1/chat/completions", prompt, keys["default"])
        assert [r.status_code for r in (first, again, team)] == [200, 200, 200]
        assert cached_tokens(again.json()) > 0  # the anonymous callers share their cache...
        assert cached_tokens(team.json()) == 0  # ...and the team "default" does not meet it
        stored = post_as(url, "/v1/responses", {"model": MODEL, "input": "keep me",
                                                "max_output_tokens": 2, "store": True}, None)
        response_id = stored.json()["id"]
        assert get(url + f"/v1/responses/{response_id}").status_code == 200
        assert get(url + f"/v1/responses/{response_id}", keys["default"]).status_code == 404
        chained = post_as(url, "/v1/responses", {"model": MODEL, "input": "more",
                                                 "previous_response_id": response_id,
                                                 "max_output_tokens": 2}, keys["default"])
        assert chained.status_code == 404
        mine = get(url + "/v1/usage", keys["default"]).json()
        theirs = get(url + "/v1/usage").json()
    assert (mine["team"], mine["total"]["requests"]) == ("default", 1)
    assert (theirs["team"], theirs["total"]["requests"]) == (ANONYMOUS_TEAM, 3)
