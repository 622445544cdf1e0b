"""Routing state shared through Redis, in-process: `Gateway` objects as replicas (no HTTP; their
engines marked healthy by hand) over a Redis server of the test's own.

Homes are one fact (the first claim wins; a rehome is seen by all), placements feed every
replica's prefix picture, a replica that starts catches up from the log, and a Redis outage
costs no request: replicas route locally, then converge on one home per conversation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.gateway.replicas import OwnRedis, own_redis
from warmroute.config import EngineEndpoint, GatewayConfig
from warmroute.gateway.features import prompt_chunks, tenant_id
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.policies import RequestFeatures

IDS = ("e1", "e2", "e3")
TENANT = tenant_id("salt-of-tenant-a")


def replica(redis_url: str) -> Gateway:
    config = GatewayConfig(
        engines=tuple(EngineEndpoint.of(f"http://127.0.0.1:{9 + i}", e) for i, e in enumerate(IDS)),
        redis_url=redis_url, load_slack=0,
    )
    gateway = Gateway(config)
    for engine_id in IDS:
        gateway.membership.probe_succeeded(engine_id, gateway.membership.clock(), None)
    return gateway


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    with own_redis(tmp_path) as server:
        yield server


async def started(*gateways: Gateway) -> list[Gateway]:
    for gateway in gateways:
        assert gateway.shared is not None
        await gateway.shared.start()
    return list(gateways)


async def stopped(*gateways: Gateway) -> None:
    for gateway in gateways:
        assert gateway.shared is not None
        await gateway.shared.stop()


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def keyed(key: str, text: str = "", tenant: str = TENANT) -> RequestFeatures:
    messages = [{"role": "user", "content": text or f"conversation {key} " * 40}]
    return RequestFeatures(key=key, chunks=prompt_chunks(messages, tenant), tenant=tenant)


async def test_a_home_placed_by_one_replica_is_the_home_on_every_other(
    redis_server: OwnRedis,
) -> None:
    a, b = await started(replica(redis_server.url), replica(redis_server.url))
    try:
        homes = {f"c{i}": (await a.route(keyed(f"c{i}"))).engine_id for i in range(12)}
        assert set(homes.values()) == set(IDS)  # new conversations spread
        await eventually(lambda: all(b.placer.home_of(k, TENANT) == e for k, e in homes.items()),
                         "replica b to learn every home from the log")
        for key, home in homes.items():
            decision = await b.route(keyed(key))
            assert (decision.engine_id, decision.reason) == (home, "sticky")
    finally:
        await stopped(a, b)


async def test_the_first_claim_wins_and_a_rehome_is_seen_by_all(redis_server: OwnRedis) -> None:
    a, b = await started(replica(redis_server.url), replica(redis_server.url))
    try:
        assert a.shared is not None and b.shared is not None
        assert await a.shared.claim(TENANT, "race", "e1", None) == "e1"
        assert await b.shared.claim(TENANT, "race", "e2", None) == "e1"  # too late: e1 holds
        await eventually(lambda: b.placer.home_of("race", TENANT) == "e1", "b to adopt e1")
        # b's own placement of a conversation a has just placed (before the log reached b):
        # its claim loses, and the request goes to the winner's home
        b.placer.homes.set(TENANT, "late", "e3")
        assert await a.shared.claim(TENANT, "late", "e2", None) == "e2"
        assert await b.shared.claim(TENANT, "late", "e3", None) == "e2"
        # a rehome: the home e1 failed on a; b sees the move
        a.membership.eject("e1", "test")
        decision = await a.route(keyed("race"))
        assert decision.reason == "rehomed" and decision.engine_id != "e1"
        await eventually(lambda: b.placer.home_of("race", TENANT) == decision.engine_id,
                         "b to see the rehome")
    finally:
        await stopped(a, b)


async def test_placements_feed_every_replicas_prefix_picture(redis_server: OwnRedis) -> None:
    a, b = await started(replica(redis_server.url), replica(redis_server.url))
    try:
        documents = [RequestFeatures(chunks=prompt_chunks(
            [{"role": "user", "content": f"Shared document {i}. " * 200}], TENANT), tenant=TENANT)
            for i in range(9)]
        placed = [(await (a, b)[i % 2].route(d)).engine_id for i, d in enumerate(documents)]
        assert set(placed) == set(IDS)
        await eventually(lambda: sum(a.placer.served.values()) == sum(b.placer.served.values())
                         == 9, "both replicas to count all nine placements")
        assert a.placer.served == b.placer.served
        for engine_id, features in zip(placed, documents, strict=True):
            depth = len(features.chunks)
            for gateway in (a, b):
                assert gateway.placer.index.matched_depth(engine_id, features.chunks) == depth
        repeat = await b.route(documents[0])  # placed by a: b knows where it is warm
        assert (repeat.engine_id, repeat.reason) == (placed[0], "prefix")
    finally:
        await stopped(a, b)


async def test_a_replica_that_starts_late_catches_up_from_the_log(
    redis_server: OwnRedis,
) -> None:
    (a,) = await started(replica(redis_server.url))
    try:
        homes = {f"k{i}": (await a.route(keyed(f"k{i}"))).engine_id for i in range(6)}
        (late,) = await started(replica(redis_server.url))
        assert late.shared is not None and late.shared.caught_up.is_set()
        assert {k: late.placer.home_of(k, TENANT) for k in homes} == homes
        await stopped(late)
    finally:
        await stopped(a)


async def test_an_unknown_conversation_is_looked_up_once(redis_server: OwnRedis) -> None:
    """A home older than the retained log (or not yet read from it) is found in Redis."""
    (a,) = await started(replica(redis_server.url))
    b = replica(redis_server.url)  # not following the log: it only has lookups
    try:
        home = (await a.route(keyed("old"))).engine_id
        assert b.shared is not None
        b.shared.up = True
        decision = await b.route(keyed("old"))
        assert (decision.engine_id, decision.reason) == (home, "sticky")
    finally:
        await stopped(a)
        await b.shared.client.aclose()  # type: ignore[union-attr]
        await b.shared.reader.aclose()  # type: ignore[union-attr]


async def test_without_redis_replicas_route_locally_then_converge(tmp_path: Path) -> None:
    server = OwnRedis(tmp_path).start()
    a, b = await started(replica(server.url), replica(server.url))
    try:
        server.kill()
        await eventually(lambda: not a.shared.up and not b.shared.up,  # type: ignore[union-attr]
                         "both replicas to notice the outage")
        text = a.metrics.exposition().decode()
        assert "warmroute_gateway_shared_state_up 0.0" in text
        # the same new conversation placed independently by both during the outage
        a.membership.acquire("e1")  # loads differ, so their choices differ
        b.membership.acquire("e2")
        first_a = (await a.route(keyed("outage"))).engine_id
        first_b = (await b.route(keyed("outage"))).engine_id
        assert first_a != first_b
        server = OwnRedis(tmp_path, port=server.port).start()  # Redis is back (empty)
        await eventually(lambda: a.shared.up and b.shared.up,  # type: ignore[union-attr]
                         "both replicas to reconnect")
        await eventually(lambda: a.placer.home_of("outage", TENANT)
                         == b.placer.home_of("outage", TENANT), "one home on both replicas")
        assert a.placer.home_of("outage", TENANT) in (first_a, first_b)
        assert "warmroute_gateway_shared_state_up 1.0" in a.metrics.exposition().decode()
    finally:
        await stopped(a, b)
        server.kill()


async def test_new_placements_reserve_prefill_together(redis_server: OwnRedis) -> None:
    """A burst of new conversations placed by several replicas at once spreads as one gateway
    would: each placement takes the candidate with the least prefill every replica reserved, in
    one atomic step; a first token releases it."""
    a, b = await started(replica(redis_server.url), replica(redis_server.url))
    try:
        assert a.shared is not None and b.shared is not None
        order = ("e1", "e2", "e3")
        shares = (a.shared, b.shared, a.shared, b.shared)
        same, none = (5.0, 5.0, 5.0), (0.0, 0.0, 0.0)
        picks = [await one.reserve(TENANT, None, order, same, none, False, None)
                 for one in shares]
        assert picks == ["e1", "e2", "e3", "e1"]  # e1, e2, e3 then 5 each: the first again
        # a conversation a replica claimed is answered to the other, whatever it reserved
        assert await a.shared.reserve(TENANT, "both", order, (1.0,) * 3, none, True,
                                      None) == "e2"
        assert await b.shared.reserve(TENANT, "both", ("e3",), (1.0,), (0.0,), True,
                                      None) == "e2"
        reserved = b.shared.client
        assert float(await reserved.hget(b.shared.queued_key, "e2")) == 5.0 + 1.0 + 1.0
        a.shared.first_token("e2", 7.0)  # released, through the outbox
        for _ in range(100):
            if float(await reserved.hget(b.shared.queued_key, "e2")) == 0.0:
                break
            await asyncio.sleep(0.01)
        assert float(await reserved.hget(b.shared.queued_key, "e2")) == 0.0
        # a release of work the decay shrank meanwhile stops at nothing: never a negative
        # balance, which would make e1 look lighter than an idle engine
        await reserved.hset(b.shared.queued_key, "e1", 8.0)  # 10 reserved, decayed to 8
        a.shared.first_token("e1", 10.0)  # released, through the outbox
        for _ in range(100):
            if float(await reserved.hget(b.shared.queued_key, "e1")) <= 0.0:
                break
            await asyncio.sleep(0.01)
        assert float(await reserved.hget(b.shared.queued_key, "e1")) == 0.0
        # a request that fails over takes its prefill to an engine no placement reserved it
        # on: reserved there as it moves, released there by its first token (the engine it
        # left released its own), so other replicas' reservations there stay whole
        await reserved.hset(b.shared.queued_key, "e2", 3.0)  # another replica's, say
        a.membership.acquire("e2", 4.0, moved=True)
        await eventually(lambda: a.membership.engines["e2"].queued == 4.0, "the local queue")
        for _ in range(100):
            if float(await reserved.hget(b.shared.queued_key, "e2")) == 7.0:
                break
            await asyncio.sleep(0.01)
        assert float(await reserved.hget(b.shared.queued_key, "e2")) == 7.0
        a.membership.release("e2", 4.0)  # it ended before a token: released where it went
        for _ in range(100):
            if float(await reserved.hget(b.shared.queued_key, "e2")) == 3.0:
                break
            await asyncio.sleep(0.01)
        assert float(await reserved.hget(b.shared.queued_key, "e2")) == 3.0
        # a candidate's bias (the prefill its cache would not spare) counts with its queue:
        # e1 (0 queued + 9) loses to e3 (5 queued + 1), which reserves its own work
        assert await a.shared.reserve(TENANT, None, ("e1", "e3"), (10.0, 2.0), (9.0, 1.0),
                                      False, None) == "e3"
        assert float(await reserved.hget(b.shared.queued_key, "e3")) == 5.0 + 2.0
        # the gateway's own placement follows the shared reservations, not its local view
        await reserved.hset(b.shared.queued_key, mapping={"e1": 50, "e2": 40, "e3": 60})
        decision = await a.route(keyed("fresh"))
        assert decision.engine_id == "e2" and decision.reason == "least-loaded"
        assert a.placer.home_of("fresh", TENANT) == "e2"
        await eventually(lambda: b.placer.home_of("fresh", TENANT) == "e2", "b to see the home")
    finally:
        await stopped(a, b)
