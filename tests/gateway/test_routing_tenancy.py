"""Issue 16, Must show 5: routing state is per tenant. A conversation id means something only
within its tenant, and prompt digests are salted per tenant, so one tenant can neither move nor
load another's conversation, nor learn from a placement whether another sent a prompt."""

from __future__ import annotations

import asyncio

from warmroute.config import EngineEndpoint, GatewayConfig
from warmroute.gateway.features import prompt_chunks, tenant_id
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.placement import CacheAwarePlacer, PlacementParams
from warmroute.gateway.policies import RequestFeatures

IDS = ("e1", "e2", "e3", "e4")
A, B = tenant_id("salt-a"), tenant_id("salt-b")
PROMPT = [{"role": "system", "content": "A document both tenants happen to send. " * 60},
          {"role": "user", "content": "Summarise it."}]


def features(tenant: str, key: str | None = "shared-id",
             messages: list[dict[str, str]] = PROMPT) -> RequestFeatures:
    return RequestFeatures(key=key, chunks=prompt_chunks(messages, tenant), tenant=tenant)


def test_salted_digests_differ_per_tenant_and_agree_within_one() -> None:
    a, b = prompt_chunks(PROMPT, A), prompt_chunks(PROMPT, B)
    assert len(a) == len(b) > 0
    assert not set(a) & set(b)
    assert prompt_chunks(PROMPT, A) == a


def test_b_reusing_as_conversation_id_is_placed_by_its_own_placement() -> None:
    """Through a `Gateway` (its engines marked healthy by hand): B's requests with A's id never
    go "sticky" to A's home, and A's home, and A's next turn, are untouched."""
    gateway = Gateway(GatewayConfig(
        engines=tuple(EngineEndpoint.of(f"http://127.0.0.1:{9 + i}", e) for i, e in enumerate(IDS)),
        load_slack=0))
    m = gateway.membership
    for engine_id in IDS:
        m.probe_succeeded(engine_id, m.clock(), None)

    async def run() -> None:
        home = (await gateway.route(features(A))).engine_id
        m.acquire(home)  # A's turn is in flight at its home
        first = await gateway.route(features(B))
        # a placement of B's own: the prompt is warm nowhere for B, and A's busy home is not
        # the least loaded
        assert first.reason == "least-loaded" and first.engine_id != home
        for _ in range(3):  # B's later turns follow B's home, not A's
            decision = await gateway.route(features(B))
            assert decision.engine_id == first.engine_id and decision.reason == "sticky"
        assert gateway.placer.home_of("shared-id", A) == home
        assert gateway.placer.home_of("shared-id", B) == first.engine_id
        assert m.engines[home].in_flight == 1  # B added no load to A's home
        m.release(home)
        again = await gateway.route(features(A))
        assert (again.engine_id, again.reason) == (home, "sticky")

    asyncio.run(run())


def placement_of_b(a_sends_the_prompt: bool) -> tuple[str, str]:
    placer = CacheAwarePlacer(PlacementParams(epsilon=0.25, slack=0))
    loads = dict.fromkeys(IDS, 0)
    a_prompt = PROMPT if a_sends_the_prompt else [{"role": "user", "content": "Other. " * 400}]
    placer.place(features(A, messages=a_prompt), loads)
    placer.served = dict.fromkeys(IDS, 1.0)  # equal loads, whatever A's request did
    decision = placer.place(features(B), loads)
    return decision.engine_id, decision.reason


def test_bs_placement_is_the_same_whether_or_not_a_sent_that_prompt() -> None:
    assert placement_of_b(True) == placement_of_b(False)
    assert placement_of_b(True)[1] == "least-loaded"  # nothing of B's prompt is warm anywhere
