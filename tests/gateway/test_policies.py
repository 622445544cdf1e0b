"""Placement policies, pure: rendezvous stability, the bounded-load rule, keyless spread."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from warmroute.errors import EngineUnavailable
from warmroute.gateway.features import affinity_digest
from warmroute.gateway.policies import (
    EngineLoad,
    RequestFeatures,
    choose,
    load_cap,
    preference,
    round_robin,
)

EPS = 0.25
RNG = random.Random(0)


def snapshot(loads: dict[str, int]) -> tuple[EngineLoad, ...]:
    return tuple(EngineLoad(e, n) for e, n in loads.items())


def idle(ids: list[str]) -> tuple[EngineLoad, ...]:
    return snapshot(dict.fromkeys(ids, 0))


def placement(keys: list[str], ids: list[str]) -> dict[str, str]:
    return {k: choose(RequestFeatures(key=k), idle(ids), EPS, RNG).engine_id for k in keys}


def test_removing_an_engine_moves_only_its_keys_and_adding_one_moves_about_a_fifth() -> None:
    """Must show 3: 10,000 keys over 4 engines."""
    keys = [f"conversation-{i}" for i in range(10_000)]
    four = ["e1", "e2", "e3", "e4"]
    before = placement(keys, four)
    share = Counter(before.values())
    assert set(share) == set(four)

    after_removal = placement(keys, ["e1", "e2", "e4"])
    moved = [k for k in keys if after_removal[k] != before[k]]
    assert all(before[k] == "e3" for k in moved)  # only keys that were on it move
    assert abs(len(moved) / len(keys) - share["e3"] / len(keys)) <= 0.02
    assert len(moved) == share["e3"]

    after_addition = placement(keys, [*four, "e5"])
    moved = [k for k in keys if after_addition[k] != before[k]]
    assert all(after_addition[k] == "e5" for k in moved)  # keys move only to the newcomer
    assert len(moved) / len(keys) <= 1 / 5 + 0.02


def test_a_key_always_lands_on_one_engine_whatever_the_order_of_the_snapshot() -> None:
    ids = ["a", "b", "c", "d"]
    for key in ("x", "conv-42", "ünïcode key"):
        first = choose(RequestFeatures(key=key), idle(ids), EPS, RNG)
        for _ in range(5):
            shuffled = ids[:]
            random.Random(key).shuffle(shuffled)
            again = choose(RequestFeatures(key=key), idle(shuffled), EPS, RNG)
            assert again.ranked == first.ranked == preference(key, ids)
            assert again.reason == "keyed"


@pytest.mark.parametrize(
    ("total", "engines", "epsilon", "cap"),
    [(0, 3, 0.25, 1), (1, 3, 0.25, 1), (2, 3, 0.25, 2), (5, 3, 0.25, 3), (11, 4, 0.25, 4),
     (9, 10, 0.1, 2), (99, 10, 0.0, 10), (7, 1, 0.25, 10)],
)
def test_load_cap_is_ceil_of_one_plus_epsilon_times_average_counting_the_new_request(
    total: int, engines: int, epsilon: float, cap: int
) -> None:
    assert load_cap(total, engines, epsilon) == cap
    assert cap == math.ceil(round((1 + epsilon) * (total + 1) / engines, 9))


def test_a_full_first_choice_spills_to_the_keys_own_second_choice() -> None:
    key = "hot"
    pref = preference(key, ["e1", "e2", "e3"])
    loads = {pref[0]: 2, pref[1]: 0, pref[2]: 0}  # cap with 2 in flight: ceil(1.25) = 2
    decision = choose(RequestFeatures(key=key), snapshot(loads), EPS, RNG)
    assert decision.reason == "spilled"
    assert decision.ranked == (pref[1], pref[0], pref[2])
    loads = {pref[0]: 3, pref[1]: 3, pref[2]: 0}  # cap ceil(1.25*7/3) = 3: both full
    decision = choose(RequestFeatures(key=key), snapshot(loads), EPS, RNG)
    assert decision.ranked == (pref[2], pref[0], pref[1])
    assert decision.reason == "spilled"


def test_one_hot_key_under_concurrency_stays_within_the_bound_and_on_its_first_two_choices(
) -> None:
    """Policy half of must-show 4: up to six concurrent requests of one key on three engines
    only ever use its first two choices, and no engine passes the cap."""
    ids = ["e1", "e2", "e3"]
    pref = preference("hot", ids)
    rng = random.Random(7)
    loads = dict.fromkeys(ids, 0)
    in_flight: list[str] = []
    for _ in range(2_000):
        if len(in_flight) == 6 or (in_flight and rng.random() < 0.5):
            loads[in_flight.pop(rng.randrange(len(in_flight)))] -= 1
            continue
        cap = load_cap(sum(loads.values()), len(ids), EPS)
        engine = choose(RequestFeatures(key="hot"), snapshot(loads), EPS, rng).engine_id
        loads[engine] += 1
        in_flight.append(engine)
        assert engine in pref[:2]
        assert all(n <= cap + 1 for n in loads.values())
        assert loads[engine] <= cap


def test_keyless_requests_sharing_a_system_prompt_spread_and_repeats_stick() -> None:
    system = {"role": "system", "content": "You are a helpful assistant. " * 40}
    ids = ["e1", "e2", "e3", "e4"]
    counts: Counter[str] = Counter()
    for i in range(400):
        messages = [system, {"role": "user", "content": f"question number {i}: why?"}]
        decision = choose(RequestFeatures(affinity=affinity_digest(messages)), idle(ids), EPS, RNG)
        assert decision.reason == "keyless-affinity"
        counts[decision.engine_id] += 1
    assert set(counts) == set(ids)
    assert max(counts.values()) <= 1.5 * 400 / len(ids)

    opening = [system, {"role": "user", "content": "the same question"}]
    later = [*opening, {"role": "assistant", "content": "an answer"},
             {"role": "user", "content": "and a follow-up"}]
    assert affinity_digest(opening) == affinity_digest(list(opening))
    assert affinity_digest(later) == affinity_digest(opening)  # a keyless conversation stays
    other_system = [{"role": "system", "content": "Another system prompt."}, opening[1]]
    assert affinity_digest(other_system) != affinity_digest(opening)


def test_keyless_affinity_under_load_goes_to_the_least_loaded_engine() -> None:
    ids = ["e1", "e2", "e3"]
    affinity = "digest"
    pref = preference(affinity, ids)
    loads = {pref[0]: 2, pref[1]: 1, pref[2]: 0}
    decision = choose(RequestFeatures(affinity=affinity), snapshot(loads), EPS, RNG)
    assert decision.reason == "least-loaded"
    assert decision.ranked == (pref[2], pref[1], pref[0])


def test_requests_with_nothing_to_hash_go_to_the_least_loaded_engine() -> None:
    loads = {"e1": 3, "e2": 0, "e3": 1}
    decision = choose(RequestFeatures(), snapshot(loads), EPS, random.Random(1))
    assert decision.ranked == ("e2", "e3", "e1")
    assert decision.reason == "least-loaded"
    ties = {choose(RequestFeatures(), idle(["a", "b", "c"]), EPS, random.Random(s)).engine_id
            for s in range(30)}
    assert ties == {"a", "b", "c"}  # ties broken by the injected randomness


def test_no_healthy_engine_is_engine_unavailable() -> None:
    with pytest.raises(EngineUnavailable):
        choose(RequestFeatures(key="k"), (), EPS, RNG)
    with pytest.raises(EngineUnavailable):
        round_robin(0, ())


def test_round_robin_cycles_over_engines_ignoring_keys() -> None:
    engines = idle(["b", "a", "c"])
    firsts = [round_robin(turn, engines).engine_id for turn in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    assert round_robin(1, engines).ranked == ("b", "c", "a")


@pytest.mark.parametrize(("total", "engines", "slack", "cap"), [
    (0, 4, 0, 1), (3, 4, 0, 2), (3, 4, 4, 5), (39, 4, 4, 14), (39, 4, 0, 13), (11, 3, 2, 6),
])
def test_load_slack_is_an_additive_floor_on_the_cap(
    total: int, engines: int, slack: int, cap: int
) -> None:
    assert load_cap(total, engines, EPS, slack) == cap


def test_slack_keeps_a_busy_first_choice_at_low_load() -> None:
    key = "warm-conversation"
    pref = preference(key, ["e1", "e2", "e3"])
    loads = {pref[0]: 2, pref[1]: 0, pref[2]: 0}  # without slack the cap is 2: it spills
    assert choose(RequestFeatures(key=key), snapshot(loads), EPS, RNG).reason == "spilled"
    kept = choose(RequestFeatures(key=key), snapshot(loads), EPS, RNG, slack=2)
    assert (kept.reason, kept.engine_id) == ("keyed", pref[0])
    loads = {pref[0]: 4, pref[1]: 0, pref[2]: 0}  # ceil(5/3) + 2 = 4: full even with slack
    assert choose(RequestFeatures(key=key), snapshot(loads), EPS, RNG, slack=2).reason == (
        "spilled")
