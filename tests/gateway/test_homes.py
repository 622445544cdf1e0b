"""Conversation homes: bounded per tenant and in all, and how many each engine holds, kept exact
as conversations move and are forgotten (the operators' engine report reads it every 2 s)."""

from __future__ import annotations

import collections
import random

from warmroute.gateway.homes import HomeTable


def counted(table: HomeTable) -> dict[str, int]:
    """The per-engine counts the slow way: every home looked at."""
    counts: collections.Counter[str] = collections.Counter()
    for tenant in ("t0", "t1", "t2"):
        for key in range(40):
            engine = table.get(tenant, f"c{key}")
            if engine is not None:
                counts[engine] += 1
    return dict(counts)


def test_each_engine_conversation_count_stays_exact_as_homes_move_and_go() -> None:
    table = HomeTable(total=50, per_tenant=30)
    rng = random.Random(7)
    for step in range(3_000):
        tenant, key = f"t{rng.randrange(3)}", f"c{rng.randrange(40)}"
        if rng.random() < 0.2:
            table.touch(tenant, key)
        else:
            table.set(tenant, key, f"e{rng.randrange(4)}")  # new, moved, or the same again
        assert table.per_engine() == counted(table), step
    assert len(table) == 50  # both bounds were met along the way
    assert sum(table.per_engine().values()) == 50


def test_an_engine_home_to_nothing_is_absent_from_the_counts() -> None:
    table = HomeTable(total=2, per_tenant=2)
    table.set("t", "a", "e1")
    table.set("t", "a", "e2")
    assert table.per_engine() == {"e2": 1}
    table.set("t", "b", "e2")
    table.set("t", "c", "e3")  # "a" goes: the oldest
    assert table.per_engine() == {"e2": 1, "e3": 1}
