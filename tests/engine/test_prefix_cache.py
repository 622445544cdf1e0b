"""Exact unit tests for `warmroute.engine.prefix_cache` (vLLM v1 0.8.5 `test_prefix_caching` style).

Covers the block hash chain (`hash_seed`, `block_hashes`, `extend_block_hashes`) and the
`PrefixCache` policy (`lookup`, `insert`, `release`) over a small `BlockPool`. Scenarios assert
exact block ids, ref counts and free-queue order after each step and end with
`check_integrity()`. Block size is 4 unless a test says otherwise, so prompts stay readable.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import pytest

from warmroute.engine.block_pool import Block, BlockPool
from warmroute.engine.prefix_cache import (
    PrefixCache,
    block_hashes,
    extend_block_hashes,
    hash_seed,
)

BS = 4
NUM_BLOCKS = 10
SEED = hash_seed("test-model", "bfloat16")


def ids(blocks: Sequence[Block]) -> list[int]:
    return [b.block_id for b in blocks]


def refs(blocks: Sequence[Block]) -> list[int]:
    return [b.ref_count for b in blocks]


def written(pairs: Sequence[tuple[int, Block]]) -> list[tuple[int, int]]:
    """(block index, block id) pairs of an `insert` result."""
    return [(index, block.block_id) for index, block in pairs]


def hashes_of(tokens: Sequence[int], salt: str = "", seed: bytes = SEED) -> list[bytes]:
    return block_hashes(tokens, BS, salt, seed)


def make_cache(num_blocks: int = NUM_BLOCKS, block_size: int = BS) -> PrefixCache:
    return PrefixCache(BlockPool(num_blocks), block_size)


# Three full blocks plus one token: [0..3] [4..7] [8..11] [12]
PROMPT_A = list(range(13))
# Shares PROMPT_A's first two blocks, then diverges: [0..3] [4..7] [100..103] [104..107] [108]
PROMPT_B = [*range(8), *range(100, 109)]


# --------------------------------------------------------------------------- hashing


def test_hash_seed_exact_and_distinct() -> None:
    expected = hashlib.sha256(b"warmroute-kv\0test-model\0bfloat16").digest()
    assert expected == SEED
    assert len(SEED) == 32
    assert hash_seed("test-model", "bfloat16") == SEED
    assert hash_seed("other-model", "bfloat16") != SEED
    assert hash_seed("test-model", "float16") != SEED
    # The separator keeps (model, dtype) pairs apart that concatenate to the same text.
    assert hash_seed("ab", "c") != hash_seed("a", "bc")


def test_block_hashes_exact_chain() -> None:
    tokens = [1, 2, 3, 4, 5, 6, 7, 8]
    h0 = hashlib.sha256(SEED + b"tenant" + b"\0" + struct.pack("<4i", 1, 2, 3, 4)).digest()
    h1 = hashlib.sha256(h0 + b"tenant" + b"\0" + struct.pack("<4i", 5, 6, 7, 8)).digest()
    assert block_hashes(tokens, BS, "tenant", SEED) == [h0, h1]


@pytest.mark.parametrize(
    ("num_tokens", "num_hashes"),
    [(0, 0), (1, 0), (3, 0), (4, 1), (7, 1), (8, 2), (12, 3), (13, 3)],
)
def test_block_hashes_cover_full_blocks_only(num_tokens: int, num_hashes: int) -> None:
    hashes = hashes_of(list(range(num_tokens)))
    assert len(hashes) == num_hashes
    assert len(set(hashes)) == num_hashes


def test_block_hashes_block_size_16() -> None:
    tokens = list(range(40))
    hashes = block_hashes(tokens, 16, "", SEED)
    assert len(hashes) == 2
    assert hashes == block_hashes(tokens[:32], 16, "", SEED)
    assert hashes[0] != hashes_of(tokens)[0]  # block size is part of what a key covers


def test_hash_chain_depends_on_every_earlier_block() -> None:
    x = [*range(4), *range(50, 54)]
    y = [*range(10, 14), *range(50, 54)]  # same second block, different first block
    hx, hy = hashes_of(x), hashes_of(y)
    assert hx[0] != hy[0]
    assert hx[1] != hy[1]

    z = [*range(4), *range(60, 64)]  # same first block, different second block
    hz = hashes_of(z)
    assert hz[0] == hx[0]
    assert hz[1] != hx[1]


def test_block_hashes_accept_any_int_sequence() -> None:
    assert hashes_of(tuple(PROMPT_A)) == hashes_of(PROMPT_A)
    assert hashes_of(range(13)) == hashes_of(PROMPT_A)


def test_salt_and_seed_change_every_hash() -> None:
    base = hashes_of(PROMPT_A)
    salted = hashes_of(PROMPT_A, salt="tenant-b")
    other_model = hashes_of(PROMPT_A, seed=hash_seed("other-model", "bfloat16"))
    other_dtype = hashes_of(PROMPT_A, seed=hash_seed("test-model", "float16"))
    for variant in (salted, other_model, other_dtype):
        assert len(variant) == 3
        assert not set(variant) & set(base)
    assert hashes_of(PROMPT_A, salt="tenant-b") == salted


def test_extend_block_hashes_is_incremental() -> None:
    hashes: list[bytes] = []
    out = extend_block_hashes(hashes, PROMPT_A[:5], BS, "", SEED)
    assert out is hashes
    assert hashes == hashes_of(PROMPT_A[:4])
    first = hashes[0]

    extend_block_hashes(hashes, PROMPT_A[:11], BS, "", SEED)
    assert len(hashes) == 2
    assert hashes[0] is first  # existing keys are kept, not recomputed
    extend_block_hashes(hashes, PROMPT_A, BS, "", SEED)
    assert hashes == hashes_of(PROMPT_A)

    # Nothing new to add: unchanged, even for fewer tokens than already hashed.
    extend_block_hashes(hashes, PROMPT_A, BS, "", SEED)
    extend_block_hashes(hashes, PROMPT_A[:4], BS, "", SEED)
    assert hashes == hashes_of(PROMPT_A)


def test_extend_block_hashes_chains_from_last_existing_key() -> None:
    sentinel = b"\x07" * 32
    hashes = extend_block_hashes([sentinel], list(range(8)), BS, "s", SEED)
    expected = hashlib.sha256(sentinel + b"s\0" + struct.pack("<4i", 4, 5, 6, 7)).digest()
    assert hashes == [sentinel, expected]


# --------------------------------------------------------------------------- lookup


def test_lookup_on_empty_cache_misses() -> None:
    cache = make_cache()
    assert cache.lookup(hashes_of(PROMPT_A), len(PROMPT_A)) == []
    assert cache.pool.free_queue_ids() == list(range(NUM_BLOCKS))
    assert refs(cache.pool.blocks) == [0] * NUM_BLOCKS
    cache.pool.check_integrity()


def test_lookup_returns_longest_cached_prefix() -> None:
    cache = make_cache()
    held_a: list[Block] = []
    assert written(cache.insert(held_a, hashes_of(PROMPT_A))) == [(0, 0), (1, 1), (2, 2)]
    cache.release(held_a)
    assert cache.pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 2, 1, 0]

    hits = cache.lookup(hashes_of(PROMPT_B), len(PROMPT_B))
    assert ids(hits) == [0, 1]
    assert refs(hits) == [1, 1]
    assert cache.pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 2]

    # A second request with the same prefix shares the same blocks.
    hits2 = cache.lookup(hashes_of(PROMPT_B), len(PROMPT_B))
    assert hits2 == hits
    assert refs(hits) == [2, 2]
    assert cache.pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 2]
    cache.pool.check_integrity()


@pytest.mark.parametrize(
    ("num_prompt_tokens", "num_hits"),
    [(0, 0), (1, 0), (4, 0), (5, 1), (8, 1), (9, 2), (12, 2), (13, 3)],
)
def test_lookup_never_covers_the_whole_prompt(num_prompt_tokens: int, num_hits: int) -> None:
    cache = make_cache()
    hashes = hashes_of(PROMPT_A)  # 3 full blocks, all cached below
    held: list[Block] = []
    cache.insert(held, hashes)
    cache.release(held)

    # A prompt of exactly k * BS tokens hits at most k - 1 blocks: one token is left to compute.
    hits = cache.lookup(hashes, num_prompt_tokens)
    assert ids(hits) == list(range(num_hits))
    assert refs(cache.pool.blocks[:3]) == [1] * num_hits + [0] * (3 - num_hits)
    cache.pool.check_integrity()


def test_lookup_stops_at_first_miss() -> None:
    cache = make_cache()
    pool = cache.pool
    hashes = hashes_of(PROMPT_A)
    held: list[Block] = []
    cache.insert(held, hashes)
    b0, b1, b2 = held
    cache.release(held)
    assert pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 2, 1, 0]

    # Evict block 1 only: drain the untouched blocks, keep block 2 referenced, take block 1.
    others = pool.get_new_blocks(7)
    pool.touch([b2])
    assert ids(pool.get_new_blocks(1)) == [1]
    assert pool.num_evictions == 1
    pool.free_blocks([b2])
    assert pool.free_queue_ids() == [0, 2]
    assert pool.get_cached_block(hashes[2]) is b2  # still cached, but unreachable

    hits = cache.lookup(hashes, len(PROMPT_A))
    assert hits == [b0]
    assert refs([b0, b1, b2]) == [1, 1, 0]
    assert pool.free_queue_ids() == [2]
    pool.free_blocks([*others, b1])
    cache.release(hits)
    pool.check_integrity()


def test_lookup_with_hashes_beyond_prompt() -> None:
    # Hashes may already cover generated tokens; only the prompt limits the hit.
    cache = make_cache()
    hashes = hashes_of(PROMPT_A)
    held: list[Block] = []
    cache.insert(held, hashes)
    assert ids(cache.lookup(hashes, 8)) == [0]
    assert refs(held) == [2, 1, 1]
    cache.pool.check_integrity()


@pytest.mark.parametrize(
    ("salt", "seed"),
    [
        ("tenant-b", SEED),
        ("", hash_seed("other-model", "bfloat16")),
        ("", hash_seed("test-model", "float16")),
    ],
)
def test_lookup_misses_across_salt_or_seed(salt: str, seed: bytes) -> None:
    cache = make_cache()
    held: list[Block] = []
    cache.insert(held, hashes_of(PROMPT_A))
    cache.release(held)
    assert cache.pool.num_cached_blocks == 3

    assert cache.lookup(hashes_of(PROMPT_A, salt=salt, seed=seed), len(PROMPT_A)) == []
    assert cache.pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 2, 1, 0]

    # Inserting under the other key duplicates the content instead of sharing it.
    other: list[Block] = []
    pairs = cache.insert(other, hashes_of(PROMPT_A, salt=salt, seed=seed))
    assert written(pairs) == [(0, 3), (1, 4), (2, 5)]
    assert cache.pool.num_cached_blocks == 6
    cache.pool.check_integrity()


# --------------------------------------------------------------------------- insert


def test_insert_into_empty_cache_writes_every_block() -> None:
    cache = make_cache()
    hashes = hashes_of(PROMPT_A)
    held: list[Block] = []
    pairs = cache.insert(held, hashes)
    assert written(pairs) == [(0, 0), (1, 1), (2, 2)]
    assert [block for _, block in pairs] == held
    assert ids(held) == [0, 1, 2]
    assert refs(held) == [1, 1, 1]
    assert [b.block_hash for b in held] == hashes
    assert [cache.pool.get_cached_block(h) for h in hashes] == held
    assert cache.pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9]
    assert cache.pool.num_cached_blocks == 3
    cache.pool.check_integrity()


def test_insert_after_lookup_writes_only_the_missing_blocks() -> None:
    cache = make_cache()
    held_a: list[Block] = []
    cache.insert(held_a, hashes_of(PROMPT_A))
    cache.release(held_a)
    assert cache.pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 2, 1, 0]

    hashes_b = hashes_of(PROMPT_B)
    assert len(hashes_b) == 4
    held_b = cache.lookup(hashes_b, len(PROMPT_B))
    assert ids(held_b) == [0, 1]
    assert cache.pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 2]

    pairs = cache.insert(held_b, hashes_b)
    assert written(pairs) == [(2, 3), (3, 4)]
    assert ids(held_b) == [0, 1, 3, 4]
    assert refs(held_b) == [1, 1, 1, 1]
    assert cache.pool.free_queue_ids() == [5, 6, 7, 8, 9, 2]
    assert cache.pool.num_cached_blocks == 5  # A's third block is still cached
    assert cache.pool.num_evictions == 0

    cache.release(held_b)
    assert held_b == []
    assert cache.pool.free_queue_ids() == [5, 6, 7, 8, 9, 2, 4, 3, 1, 0]
    cache.pool.check_integrity()


def test_insert_shares_blocks_cached_by_concurrent_request() -> None:
    cache = make_cache()
    hashes = hashes_of(PROMPT_A)
    # Both requests look up before either inserts: both miss.
    held_a = cache.lookup(hashes, len(PROMPT_A))
    held_b = cache.lookup(hashes, len(PROMPT_A))
    assert held_a == held_b == []

    assert written(cache.insert(held_a, hashes)) == [(0, 0), (1, 1), (2, 2)]
    assert cache.insert(held_b, hashes) == []  # nothing to write: all shared
    assert ids(held_b) == [0, 1, 2]
    assert all(a is b for a, b in zip(held_a, held_b, strict=True))
    assert refs(held_a) == [2, 2, 2]
    assert cache.pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9]
    assert cache.pool.num_cached_blocks == 3

    cache.release(held_a)
    assert refs(held_b) == [1, 1, 1]
    assert cache.pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9]
    cache.release(held_b)
    assert cache.pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 2, 1, 0]
    cache.pool.check_integrity()


def test_insert_shares_partially_and_writes_the_rest() -> None:
    cache = make_cache()
    hashes = hashes_of(PROMPT_A)
    held_a: list[Block] = []
    # A has computed two blocks so far; B then inserts the whole prompt.
    assert written(cache.insert(held_a, hashes[:2])) == [(0, 0), (1, 1)]
    held_b: list[Block] = []
    assert written(cache.insert(held_b, hashes)) == [(2, 2)]
    assert ids(held_b) == [0, 1, 2]
    assert refs(held_b) == [2, 2, 1]

    # A catches up and shares B's third block instead of writing its own.
    assert cache.insert(held_a, hashes) == []
    assert ids(held_a) == [0, 1, 2]
    assert refs(held_a) == [2, 2, 2]
    assert cache.pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9]
    cache.pool.check_integrity()


def test_insert_is_a_noop_when_held_covers_hashes() -> None:
    cache = make_cache()
    hashes = hashes_of(PROMPT_A)
    held: list[Block] = []
    cache.insert(held, hashes)
    before = list(held)
    assert cache.insert(held, hashes) == []
    assert cache.insert(held, hashes[:1]) == []
    assert held == before
    assert refs(held) == [1, 1, 1]
    assert cache.pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9]
    cache.pool.check_integrity()


def test_insert_stops_when_pool_is_exhausted() -> None:
    cache = make_cache(num_blocks=4)
    held_a: list[Block] = []
    cache.insert(held_a, hashes_of(PROMPT_A))
    assert ids(held_a) == [0, 1, 2]

    tokens_c = list(range(200, 217))  # 4 full blocks
    held_c: list[Block] = []
    pairs = cache.insert(held_c, hashes_of(tokens_c))
    assert written(pairs) == [(0, 3)]
    assert ids(held_c) == [3]
    assert cache.pool.num_free_blocks == 0
    assert cache.pool.num_cached_blocks == 4

    # Still no room: nothing more is written, and held stays the same prefix.
    assert cache.insert(held_c, hashes_of(tokens_c)) == []
    assert ids(held_c) == [3]

    # Room frees up: the insert resumes where it stopped, from A's blocks, last one first.
    cache.release(held_a)
    assert cache.pool.free_queue_ids() == [2, 1, 0]
    assert written(cache.insert(held_c, hashes_of(tokens_c))) == [(1, 2), (2, 1), (3, 0)]
    assert ids(held_c) == [3, 2, 1, 0]
    assert cache.pool.num_evictions == 3
    assert cache.pool.num_cached_blocks == 4
    cache.pool.check_integrity()


def test_insert_keeps_held_a_prefix_when_a_later_key_is_cached() -> None:
    cache = make_cache(num_blocks=4)
    pool = cache.pool
    hashes = hashes_of(PROMPT_A)
    held_a: list[Block] = []
    cache.insert(held_a, hashes)
    b0, b1, b2 = held_a
    cache.release(held_a)
    assert pool.free_queue_ids() == [3, 2, 1, 0]

    # Someone else holds block 2 (key 2 stays cached); blocks 3 and 1 are taken, evicting key 1.
    pool.touch([b2])
    assert ids(pool.get_new_blocks(2)) == [3, 1]
    assert b1.block_hash is None
    assert pool.get_cached_block(hashes[1]) is None
    assert pool.free_queue_ids() == [0]

    held = cache.lookup(hashes, len(PROMPT_A))
    assert held == [b0]
    assert pool.free_queue_ids() == []
    # Key 1 is missing and there is no room: stop there, even though key 2 is cached.
    assert cache.insert(held, hashes) == []
    assert held == [b0]
    assert b2.ref_count == 1
    pool.check_integrity()


def test_insert_may_evict_a_later_key_of_the_same_prompt() -> None:
    cache = make_cache(num_blocks=4)
    pool = cache.pool
    hashes = hashes_of(PROMPT_A)
    held_a: list[Block] = []
    cache.insert(held_a, hashes)
    b0, b1, b2 = held_a
    cache.release(held_a)

    # Leave key 1 evicted and key 2 cached in a free block at the head of the queue.
    (b3,) = pool.get_new_blocks(1)
    pool.touch([b2])
    assert ids(pool.get_new_blocks(1)) == [1]
    pool.free_blocks([b2])
    assert pool.free_queue_ids() == [0, 2]

    held = cache.lookup(hashes, len(PROMPT_A))
    assert held == [b0]
    assert pool.free_queue_ids() == [2]
    # Key 1 needs a new block; the only free one is block 2, whose key 2 is evicted for it.
    pairs = cache.insert(held, hashes)
    assert written(pairs) == [(1, 2)]
    assert held == [b0, b2]
    assert b2.block_hash == hashes[1]
    assert pool.get_cached_block(hashes[2]) is None
    assert pool.num_evictions == 2
    assert pool.free_queue_ids() == []
    pool.free_blocks([b3, b1])
    pool.check_integrity()


def test_insert_evicts_least_recently_released_tail_first() -> None:
    cache = make_cache(num_blocks=4)
    hashes_a = hashes_of(PROMPT_A)
    held_a: list[Block] = []
    cache.insert(held_a, hashes_a)
    cache.release(held_a)
    assert cache.pool.free_queue_ids() == [3, 2, 1, 0]

    held_c: list[Block] = []
    assert written(cache.insert(held_c, hashes_of(list(range(300, 309))))) == [(0, 3), (1, 2)]
    assert cache.pool.num_evictions == 1  # block 2 held A's last key

    # A keeps its longest prefix: the first two blocks still hit.
    hits = cache.lookup(hashes_a, len(PROMPT_A))
    assert ids(hits) == [0, 1]
    assert cache.pool.free_queue_ids() == []
    cache.pool.check_integrity()


# --------------------------------------------------------------------------- release


def test_release_frees_in_reverse_and_clears_held() -> None:
    cache = make_cache()
    held: list[Block] = []
    cache.insert(held, hashes_of(PROMPT_A))
    blocks = list(held)
    cache.release(held)
    assert held == []
    assert refs(blocks) == [0, 0, 0]
    assert cache.pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 2, 1, 0]
    assert cache.pool.num_cached_blocks == 3  # released blocks stay hittable

    cache.release(held)  # releasing the emptied list again is harmless
    assert cache.pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 2, 1, 0]
    with pytest.raises(ValueError, match="freed more often than taken"):
        cache.release(list(blocks))
    cache.pool.check_integrity()


def test_release_of_hits_only_drops_references() -> None:
    cache = make_cache()
    hashes = hashes_of(PROMPT_A)
    held_a: list[Block] = []
    cache.insert(held_a, hashes)
    hits = cache.lookup(hashes, len(PROMPT_A))
    assert refs(held_a) == [2, 2, 2]
    cache.release(hits)
    assert refs(held_a) == [1, 1, 1]
    assert cache.pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9]
    cache.pool.check_integrity()


def test_full_scenario_exact_state() -> None:
    """Three requests over a 10-block pool, vLLM `test_prefill` style."""
    cache = make_cache()
    pool = cache.pool
    hashes_a, hashes_b = hashes_of(PROMPT_A), hashes_of(PROMPT_B)

    # A: miss, writes blocks 0-2.
    held_a = cache.lookup(hashes_a, len(PROMPT_A))
    assert written(cache.insert(held_a, hashes_a)) == [(0, 0), (1, 1), (2, 2)]
    assert pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9]

    # B while A runs: hits A's first two blocks, writes two of its own.
    held_b = cache.lookup(hashes_b, len(PROMPT_B))
    assert ids(held_b) == [0, 1]
    assert written(cache.insert(held_b, hashes_b)) == [(2, 3), (3, 4)]
    assert refs(pool.blocks[:5]) == [2, 2, 1, 1, 1]
    assert pool.free_queue_ids() == [5, 6, 7, 8, 9]

    # A finishes: only its unshared last block becomes free.
    cache.release(held_a)
    assert refs(pool.blocks[:5]) == [1, 1, 0, 1, 1]
    assert pool.free_queue_ids() == [5, 6, 7, 8, 9, 2]

    # C repeats A: hits all three blocks (13 tokens), pulling block 2 back out of the queue.
    held_c = cache.lookup(hashes_a, len(PROMPT_A))
    assert ids(held_c) == [0, 1, 2]
    assert cache.insert(held_c, hashes_a) == []
    assert refs(pool.blocks[:5]) == [2, 2, 1, 1, 1]
    assert pool.free_queue_ids() == [5, 6, 7, 8, 9]

    cache.release(held_b)
    assert pool.free_queue_ids() == [5, 6, 7, 8, 9, 4, 3]
    cache.release(held_c)
    assert pool.free_queue_ids() == [5, 6, 7, 8, 9, 4, 3, 2, 1, 0]
    assert refs(pool.blocks) == [0] * NUM_BLOCKS
    assert pool.num_cached_blocks == 5
    assert pool.num_evictions == 0
    pool.check_integrity()
