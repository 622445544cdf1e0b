"""The gateway's picture of engine caches: chained chunk digests, per-engine LRU, matching."""

from __future__ import annotations

import gc
import random

import pytest

from warmroute.gateway.features import CHUNK_BYTES, prompt_chunks
from warmroute.gateway.prefix_index import PrefixIndex


def messages(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def test_prompts_sharing_a_prefix_share_exactly_its_full_chunks() -> None:
    system = "s" * (3 * CHUNK_BYTES)
    a = prompt_chunks(messages(system, "a" * CHUNK_BYTES))
    b = prompt_chunks(messages(system, "b" * CHUNK_BYTES))
    assert len(a) == len(b) == 4  # "system\x1f" + 768 + "\x1e" + "user\x1f" + 256 + "\x1e"
    assert a[:3] == b[:3] and a[3] != b[3]
    # chained: the same chunk text after a different prefix gets a different digest
    c = prompt_chunks(messages("t" * (3 * CHUNK_BYTES), "a" * CHUNK_BYTES))
    assert not set(a) & set(c)


def test_chunks_of_no_or_odd_messages() -> None:
    assert prompt_chunks(None) == ()
    assert prompt_chunks([]) == ()
    assert prompt_chunks(messages("short", "short")) == ()  # under one full chunk
    odd = prompt_chunks([{"role": "user", "content": [{"type": "text", "text": "x" * 600}]}])
    assert len(odd) == 2


def test_match_returns_the_deepest_run_and_every_engine_holding_it() -> None:
    index = PrefixIndex()
    index.insert("a", [1, 2, 3])
    index.insert("b", [1, 2])
    index.insert("c", [1, 9])
    assert index.match([1, 2, 3, 4], {"a", "b", "c"}) == (3, {"a"})
    assert index.match([1, 2, 3, 4], {"b", "c"}) == (2, {"b"})
    assert index.match([1, 5], {"a", "b", "c"}) == (1, {"a", "b", "c"})
    assert index.match([7, 1], {"a", "b", "c"}) == (0, set())
    assert index.match([], {"a"}) == (0, set())
    assert index.matched_depth("a", [1, 2, 3, 4]) == 3
    assert index.matched_depth("zz", [1]) == 0


def test_each_engine_forgets_its_least_recently_used_chunks_past_its_capacity() -> None:
    index = PrefixIndex(default_capacity=4)
    index.insert("a", [1, 2, 3])
    index.insert("a", [1, 5])  # touches 1, adds 5: LRU order 2, 3, 1, 5
    index.insert("a", [6])  # 2 goes
    assert index.size("a") == 4
    assert index.matched_depth("a", [2]) == 0
    assert index.match([1], {"a"}) == (1, {"a"})
    index.set_capacity("a", 2)  # 3 and 1 go
    assert index.match([1], {"a"}) == (0, set())
    assert index.matched_depth("a", [5]) == 1 and index.size("a") == 2
    assert 2 not in index.holders and 3 not in index.holders


def test_a_lost_engine_is_forgotten_whole() -> None:
    index = PrefixIndex()
    index.insert("a", [1, 2])
    index.insert("b", [1])
    index.forget("a")
    assert index.match([1, 2], {"a", "b"}) == (1, {"b"})
    assert index.size("a") == 0
    assert 2 not in index.holders
    index.forget("never-seen")


def test_a_forgotten_engine_bit_goes_to_the_next_new_engine_holding_nothing() -> None:
    index = PrefixIndex()
    index.insert("a", [1, 2])
    index.insert("b", [1, 3])
    index.forget("a")
    index.insert("c", [4])  # takes a's bit: none of a's chunks may count as c's
    assert index.match([1, 2], {"b", "c"}) == (1, {"b"})
    assert index.match([4], {"a", "b", "c"}) == (1, {"c"})
    assert index.matched_depth("c", [1]) == 0
    index.insert("d", [1])  # a bit never used before
    assert index.match([1, 3], {"b", "c", "d"}) == (2, {"b"})
    assert index.match([1], {"b", "c", "d"}) == (1, {"b", "d"})
    assert len(set(index.bits.values())) == 3


def test_what_the_index_keeps_per_chunk_is_nothing_the_garbage_collector_walks() -> None:
    """A full collection walks every tracked object: a set of holders per chunk made the index
    (up to its capacity per engine, for the gateway's life) a stall of the gateway's loop."""
    index = PrefixIndex()
    for engine in ("a", "b", "c"):
        index.insert(engine, prompt_chunks(messages("s" * 50 * CHUNK_BYTES, engine * 2000)))
    assert len(index.holders) > 50
    assert not any(gc.is_tracked(holders) for holders in index.holders.values())
    assert not any(gc.is_tracked(chunk) for chunk in index.holders)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PrefixIndex(default_capacity=0)
    index = PrefixIndex()
    index.set_capacity("a", 0)
    assert index.capacity_of("a") == 1


def reference_match(held: dict[str, list[int]], chunks: list[int],
                    eligible: set[str]) -> tuple[int, set[str]]:
    """By hand: each eligible engine's leading run, the deepest wins."""
    runs = {}
    for engine in eligible:
        depth = 0
        while depth < len(chunks) and chunks[depth] in held.get(engine, ()):
            depth += 1
        runs[engine] = depth
    deepest = max(runs.values(), default=0)
    return (deepest, {e for e, d in runs.items() if d == deepest}) if deepest else (0, set())


def test_match_agrees_with_matching_by_hand_whoever_is_eligible() -> None:
    """2,000 random prompts over 40 engines sharing prefixes, engines forgotten and new ones
    taking their bits, each match asked of a random eligible subset: deep holders that are not
    eligible must not hide a shallower eligible one."""
    rng = random.Random(7)
    index = PrefixIndex(default_capacity=10_000)
    held: dict[str, list[int]] = {}
    engines = [f"e{i}" for i in range(40)]
    trunks = [[rng.getrandbits(62) for _ in range(12)] for _ in range(6)]
    for step in range(2_000):
        trunk = rng.choice(trunks)
        tail = [rng.getrandbits(62) for _ in range(rng.randint(0, 3))]
        chunks = trunk[: rng.randint(1, 12)] + tail
        engine = rng.choice(engines)
        index.insert(engine, chunks)
        held.setdefault(engine, []).extend(chunks)
        if step % 97 == 0:  # an engine fails; a newcomer takes its place and its bit
            gone = rng.choice(engines)
            index.forget(gone)
            held.pop(gone, None)
            engines[engines.index(gone)] = f"new{step}"
        probe = rng.choice(trunks)[: rng.randint(1, 12)]
        eligible = {e for e in engines if rng.random() < 0.3}
        assert index.match(probe, eligible) == reference_match(held, probe, eligible)
