"""The cache-aware placer: conversations keep their home, new ones go where their prefix is
warm under the load bound, keyless traffic follows its prefix and spreads."""

from __future__ import annotations

from collections import Counter

import pytest

from warmroute.errors import EngineUnavailable
from warmroute.gateway.placement import (
    MAX_ALTERNATIVES,
    CacheAwarePlacer,
    PlacementParams,
    prefill_work,
)
from warmroute.gateway.policies import RequestFeatures, load_cap

IDS = ("e1", "e2", "e3", "e4")


def idle(ids: tuple[str, ...] = IDS) -> dict[str, int]:
    return dict.fromkeys(ids, 0)


def placer(**params: object) -> CacheAwarePlacer:
    return CacheAwarePlacer(PlacementParams(**params))  # type: ignore[arg-type]


def test_a_conversation_stays_home_even_when_others_are_less_loaded() -> None:
    p = placer()
    first = p.place(RequestFeatures(key="c"), idle())
    assert first.reason == "least-loaded"
    home = first.engine_id
    loads = {**idle(), home: 5}  # cap with slack 10: ceil(6/4) + 10 = 12
    for _ in range(5):
        decision = p.place(RequestFeatures(key="c"), loads)
        assert (decision.engine_id, decision.reason) == (home, "sticky")
    assert p.home_of("c") == home


def test_new_conversations_are_spread_evenly() -> None:
    p = placer()
    homes = Counter(p.place(RequestFeatures(key=f"c{i}"), idle()).engine_id for i in range(40))
    assert homes == dict.fromkeys(IDS, 10)


def test_a_full_home_spills_one_request_and_keeps_its_home() -> None:
    p = placer(slack=0)
    home = p.place(RequestFeatures(key="hot"), idle()).engine_id
    loads = {**idle(), home: 2}  # cap ceil(1.25 * 3 / 4) = 1: home is full
    assert load_cap(2, 4, 0.25) == 1
    spilled = p.place(RequestFeatures(key="hot"), loads)
    assert spilled.reason == "spilled" and spilled.engine_id != home
    assert spilled.ranked[1] == home  # failing over goes home first
    assert p.home_of("hot") == home
    back = p.place(RequestFeatures(key="hot"), idle())
    assert (back.engine_id, back.reason) == (home, "sticky")


def test_a_failed_home_is_replaced_and_the_new_one_kept() -> None:
    p = placer()
    home = p.place(RequestFeatures(key="c"), idle()).engine_id
    p.engine_lost(home)
    survivors = {e: 0 for e in IDS if e != home}
    moved = p.place(RequestFeatures(key="c"), survivors)
    assert moved.reason == "rehomed" and moved.engine_id != home
    assert p.home_of("c") == moved.engine_id
    again = p.place(RequestFeatures(key="c"), idle())  # the old home is back: no move
    assert (again.engine_id, again.reason) == (moved.engine_id, "sticky")


def test_a_new_conversation_goes_where_its_prefix_is_warm() -> None:
    p = placer()
    document = tuple(range(100, 110))
    owner = p.place(RequestFeatures(key="reader-1", chunks=(*document, 1)), idle()).engine_id
    for i in range(3):  # three unrelated conversations fill the other engines
        p.place(RequestFeatures(key=f"other-{i}", chunks=(i,)), idle())
    second = p.place(RequestFeatures(key="reader-2", chunks=(*document, 2)), idle())
    assert (second.engine_id, second.reason) == (owner, "prefix")


def test_a_short_shared_prefix_does_not_pull_past_the_balance_bound() -> None:
    """Every request shares chunk 0 (a system prompt) but most of each is its own: new
    conversations then spread by load, as on the Mooncake conversation trace."""
    p = placer()
    homes = Counter(
        p.place(RequestFeatures(key=f"c{i}", chunks=(0, 1000 + i, 2000 + i)), idle()).engine_id
        for i in range(40)
    )
    assert homes == dict.fromkeys(IDS, 10)


def test_a_mostly_cached_prompt_follows_its_prefix_up_to_the_hot_spot_bound() -> None:
    """Past a tight balance bound (here 1.05x) but under ⌈(1+ε)·average⌉ (1.25x), a prompt
    whose prefix is mostly cached still goes there; past that, elsewhere."""
    p = placer(balance_epsilon=0.05)
    for i in range(8):  # two unrelated conversations per engine
        p.place(RequestFeatures(key=f"other-{i}", chunks=(i,)), idle())
    document = tuple(range(100, 150))
    owner = p.place(RequestFeatures(key="reader-0", chunks=(*document, 0)), idle()).engine_id
    assert p.served[owner] == 3  # 9 served: balance cap ceil(1.05 * 10 / 4) = 3 excludes it
    second = p.place(RequestFeatures(key="reader-1", chunks=(*document, 1)), idle())
    assert (second.engine_id, second.reason) == (owner, "prefix")  # ceil(1.25 * 10 / 4) = 4
    third = p.place(RequestFeatures(key="reader-2", chunks=(*document, 2)), idle())
    assert third.engine_id != owner  # 4 served: at the hot-spot bound ceil(1.25 * 11 / 4)


def test_a_shared_prompt_spreads_under_sequential_keyless_traffic() -> None:
    p = placer()
    shared = tuple(range(50))
    seen: Counter[str] = Counter()
    for i in range(40):
        seen[p.place(RequestFeatures(chunks=(*shared, 9000 + i)), idle()).engine_id] += 1
    assert len(seen) == 4 and max(seen.values()) <= 13  # ⌈1.25 x 10⌉


def test_keyless_conversations_follow_their_own_growing_prefix() -> None:
    p = placer()
    engines = set()
    for turn in range(1, 6):
        chunks = tuple(range(turn * 10))  # each turn extends the last
        decision = p.place(RequestFeatures(chunks=chunks), idle())
        engines.add(decision.engine_id)
        for i in range(3):  # other traffic in between
            p.place(RequestFeatures(chunks=(10_000 * (turn + 1) + i,)), idle())
    assert len(engines) == 1


def test_in_flight_cap_bounds_a_hot_key_and_slack_raises_it() -> None:
    first_spills = []
    for slack in (0, 10):
        p = placer(slack=slack)
        home = p.place(RequestFeatures(key="hot"), idle()).engine_id
        loads = idle()
        for n in range(20):  # the n-th concurrent request finds n in flight, all at home
            decision = p.place(RequestFeatures(key="hot"), loads)
            if decision.engine_id != home:
                assert decision.reason == "spilled"
                assert n >= load_cap(n, 4, 0.25, slack)
                first_spills.append(n)
                break
            assert n < load_cap(n, 4, 0.25, slack)
            loads[home] += 1
    assert first_spills == [1, 14]  # ⌈1.25 x 2 / 4⌉ = 1; ⌈15 / 4⌉ + 10 = 14


def test_decisions_rank_the_choice_first_without_repeats() -> None:
    many = {f"e{i}": i % 3 for i in range(100)}
    p = placer()
    for i in range(20):
        decision = p.place(RequestFeatures(key=f"k{i % 5}"), many)
        assert len(set(decision.ranked)) == len(decision.ranked) <= 1 + 1 + MAX_ALTERNATIVES
        assert set(decision.ranked) <= set(many)


def test_no_engine_no_placement() -> None:
    with pytest.raises(EngineUnavailable):
        placer().place(RequestFeatures(key="k"), {})


def test_the_conversation_table_is_bounded() -> None:
    p = placer(max_conversations=3)
    for i in range(5):
        p.place(RequestFeatures(key=f"k{i}"), idle())
    assert [p.home_of(f"k{i}") is None for i in range(5)] == [True, True, False, False, False]


def test_served_counts_decay_so_balance_follows_recent_traffic() -> None:
    p = placer(decay_every=8)
    for i in range(8):
        p.place(RequestFeatures(key=f"k{i}"), idle())
    assert sum(p.served.values()) == 4.0  # eight placements, halved once


def test_in_a_large_fleet_new_conversations_still_spread_and_reach_a_newcomer() -> None:
    """Past 2 x SAMPLE eligible engines the least loaded is taken from a window of the fleet
    chosen by the request's hash: the spread stays even and a joining engine gets its share."""
    fleet = {f"e{i}": 0 for i in range(200)}
    p = placer()
    homes = Counter(p.place(RequestFeatures(key=f"c{i}"), fleet).engine_id for i in range(2000))
    assert set(homes) == set(fleet)
    assert max(homes.values()) <= 11  # 10 on average: ties go to the least served
    grown = {**fleet, "newcomer": 0}
    later = Counter(p.place(RequestFeatures(key=f"n{i}"), grown).engine_id for i in range(100))
    assert later["newcomer"] >= 5  # it starts empty, so it is the least served of windows


def test_in_a_large_fleet_the_window_takes_only_engines_under_the_balance_cap() -> None:
    """The window of a large fleet is filled with engines under the balance cap, looked at
    there alone: with 150 of 200 engines far past it (and idle now), every new conversation
    goes to one of the other 50, spread over them."""
    busy = {f"e{i}" for i in range(200) if i % 4}  # 150 engines, spread in the fleet's order
    fleet = {f"e{i}": 0 if f"e{i}" in busy else 1 for i in range(200)}
    p = placer()
    p.served.update({e: 100.0 for e in busy})
    homes = Counter(p.place(RequestFeatures(key=f"c{i}"), fleet).engine_id for i in range(100))
    assert not set(homes) & busy
    assert len(homes) >= 30 and max(homes.values()) <= 4


def test_among_equally_warm_engines_the_shortest_prefill_queue_wins() -> None:
    p = placer()
    shared = (1, 2)
    for engine in IDS:  # every engine holds the shared prefix
        p.index.insert(engine, shared)
    queued = {"e1": 40.0, "e2": 3.0, "e3": 12.0, "e4": 9.0}
    decision = p.place(RequestFeatures(key="new", chunks=(*shared, 7, 8)), idle(), queued)
    assert (decision.engine_id, decision.reason) == ("e2", "prefix")
    assert decision.work == 6.0  # two uncached chunks plus the request's own step (4)
    p.index.insert("e1", (*shared, 7))  # a deeper prefix beats a shorter queue
    deeper = p.place(RequestFeatures(key="other", chunks=(*shared, 7, 9)), idle(), queued)
    assert (deeper.engine_id, deeper.work) == ("e1", 5.0)


@pytest.mark.parametrize(("request_work", "chosen"), [(4.0, "e2"), (1.0, "e1")])
def test_each_request_ahead_costs_a_scheduler_step_beyond_its_prompt(
    request_work: float, chosen: str
) -> None:
    """Three 2-chunk prompts wait on e1, one 9-chunk prompt on e2: e1 has less prompt to
    prefill but runs a step for each of its three (an engine decodes its running batch
    between two prefills), so a newcomer's first token comes sooner on e2. Counting a
    request as one chunk (the placer before this cost was measured) sent it to e1."""
    p = placer(request_work=request_work)
    small = prefill_work(RequestFeatures(chunks=(1, 2)), 0, request_work)
    large = prefill_work(RequestFeatures(chunks=tuple(range(10, 19))), 0, request_work)
    assert (small, large) == (2 + request_work, 9 + request_work)
    queued = {"e1": 3 * small, "e2": large, "e3": 50.0, "e4": 50.0}
    newcomer = p.place(RequestFeatures(key="n", chunks=(100, 101, 102)), idle(), queued)
    assert (newcomer.engine_id, newcomer.reason) == (chosen, "least-loaded")


def test_a_sticky_decision_carries_the_work_its_home_still_has_to_do() -> None:
    p = placer()
    home = p.place(RequestFeatures(key="c", chunks=(1, 2, 3)), idle()).engine_id
    turn = p.place(RequestFeatures(key="c", chunks=(1, 2, 3, 4, 5)), idle(), {home: 99.0})
    assert (turn.engine_id, turn.reason, turn.work) == (home, "sticky", 6.0)


def test_a_new_conversation_weighs_the_queue_ahead_against_the_prefix_it_would_reuse() -> None:
    """Cost: prefill queued ahead + 4 × the chunks the engine does not hold. A warm engine
    keeps the conversation while its queue is under four times the prefill its cache saves;
    past that, an idle engine gets it (the first token comes sooner there)."""
    shared = tuple(range(4))  # a system prompt of 4 chunks, cached on e1 only
    p = placer()
    p.observe("e1", shared)
    for other in IDS[1:]:
        p.observe(other, (50 + IDS.index(other),))  # every engine served one request
    prompt = (*shared, *range(100, 106))  # 10 chunks: 6 uncached on e1, 10 elsewhere
    short = p.plan(RequestFeatures(key="a", chunks=prompt), idle(), {"e1": 15.0})
    assert short.candidates[0] == "e1"  # 15 + 4·6 = 39 < 0 + 4·10 = 40
    assert (short.works[0], short.biases[0]) == (10.0, 24.0)
    long = p.plan(RequestFeatures(key="a", chunks=prompt), idle(), {"e1": 17.0})
    assert long.candidates[0] != "e1" and long.candidates[-1] == "e1"  # 41 > 40
    assert (long.works[0], long.biases[0]) == (14.0, 40.0)
    decision = p.place(RequestFeatures(key="a", chunks=prompt), idle(), {"e1": 17.0})
    assert (decision.engine_id, decision.reason, decision.work) == (
        long.candidates[0], "least-loaded", 14.0)
    assert p.home_of("a") == long.candidates[0]
