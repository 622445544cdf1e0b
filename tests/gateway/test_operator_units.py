"""The pieces of issue 15 on their own: engine credentials in the configuration (flags, TOML,
environment) and URLs shown redacted; admin keys stored and resolved; the timeline's steps and
the operators' summaries computed exactly from the gateway's own metrics; the timeline and the
exposition read the registry off the event loop."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import warmroute.gateway.operations as operations
import warmroute.gateway.timeline as timeline_module
from tests.gateway.inprocess import bearer, in_process_gateway, make_keys
from tests.gateway.scripted import ScriptedFleet
from warmroute.app.cli import build_parser
from warmroute.app.gateway_command import gateway_config
from warmroute.app.serve import ensure_dev_key
from warmroute.config import EngineEndpoint, GatewayConfig, ServeConfig, redacted_url
from warmroute.errors import AuthError, InvalidApiKey, PermissionDenied
from warmroute.gateway.auth import ANONYMOUS_TEAM, Authenticator, create_key
from warmroute.gateway.membership import Membership
from warmroute.gateway.metrics import GatewayMetrics
from warmroute.gateway.operations import activity_of, ttft_quantile_ms
from warmroute.gateway.timeline import Timeline
from warmroute.store import hash_key, open_store
from warmroute.types import Usage

CREDENTIALED = "http://wr-user:pw-123@127.0.0.1:8101/"


def test_urls_are_shown_without_their_credentials() -> None:
    endpoint = EngineEndpoint.parse(CREDENTIALED)
    assert (endpoint.url, endpoint.engine_id) == ("http://wr-user:pw-123@127.0.0.1:8101",
                                                  "127.0.0.1:8101")
    assert endpoint.shown_url == "http://***@127.0.0.1:8101"
    assert redacted_url("http://127.0.0.1:1/v1") == "http://127.0.0.1:1/v1"
    assert "pw-123" not in repr(endpoint)
    keyed = EngineEndpoint.of("http://h:1", "a", api_key="k-secret")
    assert keyed.auth_headers() == {"authorization": "Bearer k-secret"}
    assert "k-secret" not in repr(keyed) and "k-secret" not in repr(GatewayConfig(
        engines=(keyed,), engine_api_key="k-secret"))
    with pytest.raises(ValueError, match="not both"):
        GatewayConfig(engines=(EngineEndpoint.of(CREDENTIALED, api_key="k"),))


def test_engine_keys_from_toml_flags_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\nengine_api_key = "from-file"\npublic_metrics = true\n\n'
                    '[[engines]]\nurl = "http://h:1"\nid = "own"\napi_key = "own-key"\n\n'
                    '[[engines]]\nurl = "http://h:2"\nid = "default"\n')
    config = GatewayConfig.from_toml(path)
    assert [e.api_key for e in config.keyed_engines] == ["own-key", "from-file"]
    assert config.public_metrics
    flagged = gateway_config(build_parser().parse_args(
        ["gateway", "--config", str(path), "--engine-api-key", "from-flag"]))
    assert [e.api_key for e in flagged.keyed_engines] == ["own-key", "from-flag"]
    monkeypatch.setenv("WARMROUTE_ENGINE_API_KEY", "from-env")
    plain = gateway_config(build_parser().parse_args(["gateway", "--engine", "http://h:3"]))
    assert [e.api_key for e in plain.keyed_engines] == ["from-env"] and not plain.public_metrics
    opened = gateway_config(build_parser().parse_args(
        ["gateway", "--engine", "http://h:3", "--public-metrics"]))
    assert opened.public_metrics
    engine = build_parser().parse_args(["engine", "--api-key", "k"])
    assert engine.api_key == "k"


async def test_admin_keys_are_stored_and_resolved(tmp_path: Path) -> None:
    store = await open_store(str(tmp_path / "w.db"))
    try:
        admin_secret, admin = await create_key(store, "ops", "ops", admin=True)
        tenant_secret, tenant = await create_key(store, "t", "team-a")
        assert (await store.api_keys.get(admin.key_id)) == admin and admin.admin
        assert not (await store.api_keys.get(tenant.key_id)).admin  # type: ignore[union-attr]
        auth = Authenticator(lambda: store, b"s", required=False)
        assert (await auth.admin(f"Bearer {admin_secret}")).admin
        with pytest.raises(PermissionDenied):
            await auth.admin(f"Bearer {tenant_secret}")
        with pytest.raises(AuthError):
            await auth.admin(None)  # keys optional for tenants, never for operators
        with pytest.raises(InvalidApiKey):
            await auth.admin("Bearer xai-wr-unknown-unknown")
        anonymous = await auth.caller(None)
        assert (anonymous.team, anonymous.key_id, anonymous.admin) == (
            ANONYMOUS_TEAM, ANONYMOUS_TEAM, False)
        assert anonymous.cache_salt != auth.salt_for("default", "default")
    finally:
        await store.close()


async def test_serves_dev_key_is_an_admin_key_even_in_an_old_data_dir(tmp_path: Path) -> None:
    config = ServeConfig(data_dir=tmp_path)
    first = await ensure_dev_key(config)
    assert await ensure_dev_key(config) == first
    store = await open_store(str(tmp_path / "warmroute.db"))
    try:
        assert (await store.api_keys.get_by_hash(hash_key(first))).admin  # type: ignore[union-attr]
        old, _ = await create_key(store, "development", "dev")  # what an older serve made
    finally:
        await store.close()
    (tmp_path / "dev-key").write_text(old + "\n")
    renewed = await ensure_dev_key(config)
    assert renewed not in (old, first) and (tmp_path / "dev-key").read_text().strip() == renewed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_timeline_steps_hold_exact_increases() -> None:
    clock = Clock()
    metrics = GatewayMetrics(Membership([EngineEndpoint.of("http://h:1", "e1")]))
    timeline = Timeline(metrics.registry, clock)
    timeline.sample()
    for second, cached in ((1, 0), (2, 48), (7, 96)):
        clock.now = 1000.0 + second
        metrics.decisions.labels("sticky").inc()
        metrics.answers.labels("e1", "200").inc()
        metrics.record_usage("e1", Usage(100, 4, cached))
        metrics.first_token.observe(0.02 * second)
        timeline.sample()
    clock.now = 1010.0
    a = activity_of(timeline.steps(10, 5), 5)
    assert a["t"] == [1005.0, 1010.0]
    assert a["requests"] == [2, 1] and a["decisions"]["sticky"] == [2, 1]
    assert a["hit_rate"] == [0.24, 0.96]
    assert a["ttft_ms"] == [30.0, 140.0]
    w = a["window"]
    assert (w["requests"], w["prompt_tokens"], w["cached_tokens"]) == (3, 300, 144)
    assert (w["failovers"], w["resumed"], w["errors"]) == (0, 0, 0)
    quiet = activity_of(timeline.steps(2, 1), 1)  # 1008..1010: nothing happened
    assert quiet["requests"] == [0, 0] and quiet["hit_rate"] == [None, None]
    assert ttft_quantile_ms(timeline.steps(10, 10)[0], 0.5) == 37.5


def threads_calling(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[Any]:
    """The threads each later call of `owner.name` runs on, in order (the call goes through)."""
    seen: list[threading.Thread] = []
    real = getattr(owner, name)

    def recording(*args: Any) -> Any:
        seen.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(owner, name, recording)
    return seen


async def test_a_running_timeline_reads_the_registry_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reading a registry costs ~4 µs a series: at 512 engines, 20 ms of the loop each second."""
    clock = Clock()
    metrics = GatewayMetrics(Membership([EngineEndpoint.of("http://h:1", "e1")]))
    timeline = Timeline(metrics.registry, clock)
    read_on = threads_calling(monkeypatch, timeline_module, "counter_totals")
    await timeline.running_sample()
    metrics.decisions.labels("sticky").inc()
    clock.now += 1
    await timeline.running_sample()
    assert len(read_on) == 2 and threading.current_thread() not in read_on
    assert timeline.steps(1, 1)[0].value("warmroute_gateway_routing_decisions_total",
                                         "sticky") == 1.0


async def test_the_metrics_exposition_is_written_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At 512 engines writing the exposition takes 47 ms: on the loop, every scrape held up
    every request in flight."""
    written_on = threads_calling(monkeypatch, GatewayMetrics, "exposition")
    async with in_process_gateway(ScriptedFleet("m1"), tmp_path, public_metrics=True) as gw:
        answer = await gw.http.get("/metrics")
    assert answer.status_code == 200
    assert 'warmroute_gateway_engine_healthy{engine="m1"} 1.0' in answer.text
    assert len(written_on) == 1 and written_on[0] is not threading.current_thread()


async def test_the_dashboard_reads_its_activity_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Five minutes in 5 s steps take 73 ms at 512 engines; the page asks every 2 s."""
    keys = await make_keys(tmp_path, ops={"team": "ops", "admin": True})
    read_on = threads_calling(monkeypatch, Timeline, "steps")
    async with in_process_gateway(ScriptedFleet("d1"), tmp_path) as gw:
        answer = await gw.http.get("/v1/admin/dashboard?window=10&step=5",
                                   headers=bearer(keys["ops"][0]))
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["activity"]["t"]) == 2
    assert len(read_on) == 1 and read_on[0] is not threading.current_thread()


async def test_the_engine_report_is_made_off_the_event_loop_and_counts_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reading the registry takes 20 ms at 512 engines, and summing each engine's answers over
    every series took 63 ms more; the page asks every 2 s."""
    keys = await make_keys(tmp_path, ops={"team": "ops", "admin": True})
    made_on = threads_calling(monkeypatch, operations, "engine_rows")
    body = {"model": "scripted-model", "messages": [{"role": "user", "content": "hi"}]}
    async with in_process_gateway(ScriptedFleet("r1", "r2"), tmp_path,
                                  policy="cache-aware") as gw:
        for conversation in ("a", "b", "c", "a"):
            answer = await gw.http.post("/v1/chat/completions", json=body,
                                        headers={"x-grok-conv-id": conversation})
            assert answer.status_code == 200, answer.text
        report = await gw.http.get("/v1/admin/engines", headers=bearer(keys["ops"][0]))
    rows = report.json()["data"]
    assert [r["id"] for r in rows] == ["r1", "r2"]
    assert sum(r["requests"] for r in rows) == 4
    assert sum(r["conversations"] for r in rows) == 3
    assert len(made_on) == 1 and made_on[0] is not threading.current_thread()
