"""Exact unit tests for `warmroute.engine.block_pool` (vLLM v1 0.8.5 `test_prefix_caching` style).

Every test pins block ids, ref counts and the free queue's order (`free_queue_ids()`, first
evicted first) after each step, and ends with `check_integrity()`. Hashes here are fake 32-byte
keys: the pool treats them as opaque, so the hashing scheme is tested in `test_prefix_cache.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from warmroute.engine.block_pool import Block, BlockPool, BlockPoolExhausted

NUM_BLOCKS = 10


def ids(blocks: Sequence[Block]) -> list[int]:
    return [b.block_id for b in blocks]


def refs(blocks: Sequence[Block]) -> list[int]:
    return [b.ref_count for b in blocks]


def fake_hash(n: int) -> bytes:
    """A distinct opaque key per `n` (sha256-sized)."""
    return n.to_bytes(32, "big")


@pytest.fixture
def pool() -> BlockPool:
    return BlockPool(NUM_BLOCKS)


def cached_and_freed(pool: BlockPool, n: int) -> list[Block]:
    """Take `n` blocks, cache block i under fake_hash(i), free them in reverse (release order)."""
    blocks = pool.get_new_blocks(n)
    for block in blocks:
        pool.cache_block(block, fake_hash(block.block_id))
    pool.free_blocks(list(reversed(blocks)))
    return blocks


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("num_blocks", [0, -1])
def test_pool_needs_at_least_one_block(num_blocks: int) -> None:
    with pytest.raises(ValueError, match="at least one block"):
        BlockPool(num_blocks)


def test_initial_state(pool: BlockPool) -> None:
    assert pool.num_blocks == NUM_BLOCKS
    assert pool.num_free_blocks == NUM_BLOCKS
    assert pool.num_cached_blocks == 0
    assert pool.num_evictions == 0
    assert pool.free_queue_ids() == list(range(NUM_BLOCKS))
    assert ids(pool.blocks) == list(range(NUM_BLOCKS))
    assert refs(pool.blocks) == [0] * NUM_BLOCKS
    assert all(b.block_hash is None for b in pool.blocks)
    pool.check_integrity()


def test_single_block_pool() -> None:
    pool = BlockPool(1)
    assert pool.free_queue_ids() == [0]
    (block,) = pool.get_new_blocks(1)
    assert block is pool.blocks[0]
    assert pool.free_queue_ids() == []
    assert not pool.can_allocate(1)
    pool.free_blocks([block])
    assert pool.free_queue_ids() == [0]
    pool.check_integrity()


def test_blocks_compare_by_identity() -> None:
    # eq=False: two blocks with equal fields are still distinct blocks.
    assert Block(3) != Block(3)
    assert len({id(b) for b in BlockPool(3).blocks}) == 3


# --------------------------------------------------------------------------- get_new_blocks


def test_get_new_blocks_takes_from_head(pool: BlockPool) -> None:
    first = pool.get_new_blocks(3)
    assert ids(first) == [0, 1, 2]
    assert refs(first) == [1, 1, 1]
    assert all(b is pool.blocks[b.block_id] for b in first)
    assert pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9]
    assert pool.num_free_blocks == 7

    second = pool.get_new_blocks(2)
    assert ids(second) == [3, 4]
    assert refs(second) == [1, 1]
    assert pool.free_queue_ids() == [5, 6, 7, 8, 9]
    assert pool.num_free_blocks == 5
    assert pool.num_evictions == 0
    pool.check_integrity()


def test_get_zero_new_blocks(pool: BlockPool) -> None:
    assert pool.get_new_blocks(0) == []
    assert pool.free_queue_ids() == list(range(NUM_BLOCKS))
    pool.check_integrity()


def test_get_new_blocks_exhausted(pool: BlockPool) -> None:
    pool.get_new_blocks(8)
    assert pool.free_queue_ids() == [8, 9]
    assert pool.can_allocate(0)
    assert pool.can_allocate(2)
    assert not pool.can_allocate(3)

    with pytest.raises(BlockPoolExhausted, match="asked for 3 blocks, 2 free"):
        pool.get_new_blocks(3)
    # A refused request takes nothing.
    assert pool.free_queue_ids() == [8, 9]
    assert refs(pool.blocks[8:]) == [0, 0]

    assert ids(pool.get_new_blocks(2)) == [8, 9]
    assert pool.num_free_blocks == 0
    assert not pool.can_allocate(1)
    with pytest.raises(BlockPoolExhausted):
        pool.get_new_blocks(1)
    assert refs(pool.blocks) == [1] * NUM_BLOCKS
    pool.check_integrity()


def test_block_pool_exhausted_is_runtime_error() -> None:
    assert issubclass(BlockPoolExhausted, RuntimeError)


# --------------------------------------------------------------------------- free_blocks


def test_free_blocks_appends_to_tail_in_given_order(pool: BlockPool) -> None:
    b0, b1, b2, b3 = pool.get_new_blocks(4)
    assert pool.free_queue_ids() == [4, 5, 6, 7, 8, 9]

    pool.free_blocks([b2, b0])
    assert pool.free_queue_ids() == [4, 5, 6, 7, 8, 9, 2, 0]
    assert refs([b0, b1, b2, b3]) == [0, 1, 0, 1]

    pool.free_blocks([b3, b1])
    assert pool.free_queue_ids() == [4, 5, 6, 7, 8, 9, 2, 0, 3, 1]
    assert refs([b0, b1, b2, b3]) == [0, 0, 0, 0]

    # Allocation follows the queue: the untouched blocks first, then the freed ones in order.
    assert ids(pool.get_new_blocks(7)) == [4, 5, 6, 7, 8, 9, 2]
    assert pool.free_queue_ids() == [0, 3, 1]
    pool.check_integrity()


def test_shared_block_joins_queue_only_at_zero(pool: BlockPool) -> None:
    (b0,) = pool.get_new_blocks(1)
    pool.touch([b0])
    assert b0.ref_count == 2
    assert pool.free_queue_ids() == [1, 2, 3, 4, 5, 6, 7, 8, 9]

    pool.free_blocks([b0])
    assert b0.ref_count == 1
    assert pool.free_queue_ids() == [1, 2, 3, 4, 5, 6, 7, 8, 9]

    pool.free_blocks([b0])
    assert b0.ref_count == 0
    assert pool.free_queue_ids() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    pool.check_integrity()


def test_free_more_often_than_taken_raises(pool: BlockPool) -> None:
    (b0,) = pool.get_new_blocks(1)
    pool.free_blocks([b0])
    assert pool.free_queue_ids() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]

    with pytest.raises(ValueError, match="block 0 freed more often than taken"):
        pool.free_blocks([b0])
    assert b0.ref_count == 0
    assert pool.free_queue_ids() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]

    # A block that was never taken cannot be freed either.
    with pytest.raises(ValueError, match="block 5 freed more often than taken"):
        pool.free_blocks([pool.blocks[5]])
    assert pool.blocks[5].ref_count == 0
    assert pool.free_queue_ids() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    pool.check_integrity()


# --------------------------------------------------------------------------- cache_block


def test_cache_block_publishes_under_hash(pool: BlockPool) -> None:
    assert pool.get_cached_block(fake_hash(7)) is None
    (b0,) = pool.get_new_blocks(1)
    pool.cache_block(b0, fake_hash(7))
    assert b0.block_hash == fake_hash(7)
    assert pool.get_cached_block(fake_hash(7)) is b0
    assert pool.num_cached_blocks == 1
    assert b0.ref_count == 1
    pool.check_integrity()


def test_cache_block_twice_raises(pool: BlockPool) -> None:
    b0, b1 = pool.get_new_blocks(2)
    pool.cache_block(b0, fake_hash(1))

    with pytest.raises(ValueError, match="block 0 is already cached"):
        pool.cache_block(b0, fake_hash(2))
    assert b0.block_hash == fake_hash(1)
    assert pool.get_cached_block(fake_hash(2)) is None

    with pytest.raises(ValueError, match="block 0 is already cached"):
        pool.cache_block(b0, fake_hash(1))

    # A second block under a hash that is already taken is refused too: no duplicates.
    with pytest.raises(ValueError, match="another block is already cached under this hash"):
        pool.cache_block(b1, fake_hash(1))
    assert b1.block_hash is None
    assert pool.get_cached_block(fake_hash(1)) is b0
    assert pool.num_cached_blocks == 1
    pool.check_integrity()


def test_freed_cached_block_stays_cached(pool: BlockPool) -> None:
    blocks = cached_and_freed(pool, 3)
    assert ids(blocks) == [0, 1, 2]
    # Freed in reverse, so the sequence's last block is evicted first.
    assert pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 2, 1, 0]
    assert pool.num_free_blocks == NUM_BLOCKS
    assert pool.num_cached_blocks == 3
    assert [pool.get_cached_block(fake_hash(i)) for i in range(3)] == blocks
    assert pool.num_evictions == 0
    pool.check_integrity()


# --------------------------------------------------------------------------- touch


def test_touch_free_cached_block_pulls_it_from_queue(pool: BlockPool) -> None:
    b0, b1, b2 = cached_and_freed(pool, 3)
    assert pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 2, 1, 0]

    pool.touch([b1])
    assert b1.ref_count == 1
    assert pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 2, 0]
    assert pool.num_free_blocks == 9
    assert pool.get_cached_block(fake_hash(1)) is b1  # a hit keeps its hash

    pool.touch([b1])
    assert b1.ref_count == 2
    assert pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 2, 0]

    # Once released it rejoins at the tail: least recently used goes first.
    pool.free_blocks([b1, b1])
    assert b1.ref_count == 0
    assert pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 2, 0, 1]
    assert refs([b0, b1, b2]) == [0, 0, 0]
    assert pool.num_evictions == 0
    pool.check_integrity()


def test_touch_several_blocks_in_one_call(pool: BlockPool) -> None:
    b0, b1, b2 = cached_and_freed(pool, 3)
    pool.touch([b0, b2])
    assert refs([b0, b1, b2]) == [1, 0, 1]
    assert pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 1]
    pool.touch([])
    assert pool.free_queue_ids() == [3, 4, 5, 6, 7, 8, 9, 1]
    pool.check_integrity()


def test_touch_referenced_block_only_bumps_ref_count(pool: BlockPool) -> None:
    b0, b1 = pool.get_new_blocks(2)
    pool.touch([b0, b0, b1])
    assert refs([b0, b1]) == [3, 2]
    assert pool.free_queue_ids() == [2, 3, 4, 5, 6, 7, 8, 9]
    pool.check_integrity()


# --------------------------------------------------------------------------- eviction


def test_cached_block_evicted_when_taken_from_head(pool: BlockPool) -> None:
    blocks = pool.get_new_blocks(NUM_BLOCKS)
    for block in blocks:
        pool.cache_block(block, fake_hash(block.block_id))
    pool.free_blocks(list(reversed(blocks)))
    assert pool.free_queue_ids() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert pool.num_cached_blocks == 10

    taken = pool.get_new_blocks(2)
    assert ids(taken) == [9, 8]
    assert refs(taken) == [1, 1]
    assert [b.block_hash for b in taken] == [None, None]
    assert pool.get_cached_block(fake_hash(9)) is None
    assert pool.get_cached_block(fake_hash(8)) is None
    assert pool.get_cached_block(fake_hash(7)) is blocks[7]
    assert pool.num_cached_blocks == 8
    assert pool.num_evictions == 2
    assert pool.free_queue_ids() == [7, 6, 5, 4, 3, 2, 1, 0]
    pool.check_integrity()

    # A hit on block 0 saves it: the next allocation skips it.
    pool.touch([blocks[0]])
    assert pool.free_queue_ids() == [7, 6, 5, 4, 3, 2, 1]
    assert ids(pool.get_new_blocks(7)) == [7, 6, 5, 4, 3, 2, 1]
    assert pool.num_evictions == 9
    assert pool.num_cached_blocks == 1
    assert pool.get_cached_block(fake_hash(0)) is blocks[0]
    assert pool.free_queue_ids() == []
    pool.check_integrity()


def test_uncached_block_reuse_is_not_an_eviction(pool: BlockPool) -> None:
    blocks = pool.get_new_blocks(NUM_BLOCKS)
    pool.free_blocks(blocks)
    assert pool.free_queue_ids() == list(range(NUM_BLOCKS))
    assert ids(pool.get_new_blocks(NUM_BLOCKS)) == list(range(NUM_BLOCKS))
    assert pool.num_evictions == 0
    pool.check_integrity()


def test_evicted_block_and_hash_can_be_cached_again() -> None:
    pool = BlockPool(2)
    b0, b1 = pool.get_new_blocks(2)
    pool.cache_block(b0, fake_hash(0))
    pool.free_blocks([b0])
    assert pool.free_queue_ids() == [0]

    (again,) = pool.get_new_blocks(1)
    assert again is b0
    assert pool.num_evictions == 1
    assert pool.get_cached_block(fake_hash(0)) is None

    # The evicted block takes a new key, and the old key can go to another block.
    pool.cache_block(b0, fake_hash(42))
    pool.cache_block(b1, fake_hash(0))
    assert pool.get_cached_block(fake_hash(42)) is b0
    assert pool.get_cached_block(fake_hash(0)) is b1
    assert pool.num_cached_blocks == 2
    pool.check_integrity()


# --------------------------------------------------------------------------- check_integrity


def _free_block_marked_referenced(pool: BlockPool) -> None:
    pool.blocks[4].ref_count = 1


def _negative_ref_count(pool: BlockPool) -> None:
    (b0,) = pool.get_new_blocks(1)
    b0.ref_count = -1


def _referenced_block_dropped_without_queueing(pool: BlockPool) -> None:
    (b0,) = pool.get_new_blocks(1)
    b0.ref_count = 0


def _free_block_lost_from_queue(pool: BlockPool) -> None:
    del pool._free[4]


def _hash_map_disagrees(pool: BlockPool) -> None:
    (b0,) = pool.get_new_blocks(1)
    pool.cache_block(b0, fake_hash(1))
    b0.block_hash = fake_hash(2)


def _hashed_block_missing_from_map(pool: BlockPool) -> None:
    pool.blocks[3].block_hash = fake_hash(3)


def _hash_map_entry_without_block_hash(pool: BlockPool) -> None:
    (b0,) = pool.get_new_blocks(1)
    pool.cache_block(b0, fake_hash(1))
    b0.block_hash = None


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_free_block_marked_referenced, "free \\+ referenced != total"),
        (_negative_ref_count, "negative ref count"),
        (_referenced_block_dropped_without_queueing, "free \\+ referenced != total"),
        (_free_block_lost_from_queue, "free \\+ referenced != total"),
        (_hash_map_disagrees, "hash map disagrees with block 0"),
        (_hashed_block_missing_from_map, "a hashed block is missing from the hash map"),
        (_hash_map_entry_without_block_hash, "hash map disagrees with block 0"),
    ],
)
def test_check_integrity_detects_corruption(
    pool: BlockPool, corrupt: Callable[[BlockPool], None], message: str
) -> None:
    pool.check_integrity()
    corrupt(pool)
    with pytest.raises(AssertionError, match=message):
        pool.check_integrity()


def test_check_integrity_detects_referenced_block_in_queue(pool: BlockPool) -> None:
    (b0,) = pool.get_new_blocks(1)
    # Swap the ref counts of a referenced and a queued block: the totals still add up, so only
    # the queue check can catch it.
    b0.ref_count = 0
    pool.blocks[1].ref_count = 1
    with pytest.raises(AssertionError, match="referenced block in free queue"):
        pool.check_integrity()
