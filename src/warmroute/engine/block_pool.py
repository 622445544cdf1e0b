"""A ref-counted pool of fixed-size KV blocks with an LRU free queue (vLLM v1 0.8.5 style).

The pool owns block *metadata* only: ids, ref counts and content hashes. Where a block's KV
tensors live is the runner's business (the block id indexes its storage), so the simulated
engine uses the very same pool without torch.

Eviction order is the free queue's order: a block whose ref count drops to 0 is appended at the
tail, and new blocks are taken from the head. A cached block taken from the head loses its hash
(it is evicted); a cached block that is hit again is pulled out of the queue (`touch`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(eq=False)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None


class BlockPoolExhausted(RuntimeError):
    """More blocks were asked for than are free."""


class BlockPool:
    """`num_blocks` blocks, each either referenced (ref_count > 0) or in the free queue."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError("a block pool needs at least one block")
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Ordered by eviction priority: the first entry goes first.
        self._free: OrderedDict[int, Block] = OrderedDict((b.block_id, b) for b in self.blocks)
        self._cached: dict[bytes, Block] = {}
        self.num_evictions = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def free_queue_ids(self) -> list[int]:
        """Block ids in eviction order (first evicted first)."""
        return list(self._free)

    def get_cached_block(self, block_hash: bytes) -> Block | None:
        return self._cached.get(block_hash)

    def touch(self, blocks: Iterable[Block]) -> None:
        """Take a reference on each block, pulling unreferenced ones out of the free queue."""
        for block in blocks:
            if block.ref_count == 0:
                del self._free[block.block_id]
            block.ref_count += 1

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def get_new_blocks(self, n: int) -> list[Block]:
        """Take `n` blocks from the head of the free queue, evicting their cached content."""
        if not self.can_allocate(n):
            raise BlockPoolExhausted(f"asked for {n} blocks, {len(self._free)} free")
        taken: list[Block] = []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            self._evict(block)
            block.ref_count = 1
            taken.append(block)
        return taken

    def cache_block(self, block: Block, block_hash: bytes) -> None:
        """Publish a filled block under its hash so later requests can hit it."""
        if block.block_hash is not None:
            raise ValueError(f"block {block.block_id} is already cached")
        if block_hash in self._cached:
            raise ValueError("another block is already cached under this hash")
        block.block_hash = block_hash
        self._cached[block_hash] = block

    def uncache(self, blocks: Iterable[Block]) -> None:
        """Withdraw published blocks whose KV never reached the store (they stay referenced)."""
        for block in blocks:
            if block.block_hash is not None:
                del self._cached[block.block_hash]
                block.block_hash = None

    def free_blocks(self, blocks: Sequence[Block]) -> None:
        """Drop one reference on each block, in order; freed blocks join the queue's tail.

        Callers pass a sequence's blocks in reverse so its last block is evicted first.
        """
        for block in blocks:
            if block.ref_count <= 0:
                raise ValueError(f"block {block.block_id} freed more often than taken")
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block.block_id] = block

    def _evict(self, block: Block) -> None:
        if block.block_hash is not None:
            del self._cached[block.block_hash]
            block.block_hash = None
            self.num_evictions += 1

    def check_integrity(self) -> None:
        """Raise AssertionError unless free + referenced = total and the hash map is consistent."""
        referenced = [b for b in self.blocks if b.ref_count > 0]
        assert all(b.ref_count >= 0 for b in self.blocks), "negative ref count"
        assert len(referenced) + len(self._free) == len(self.blocks), "free + referenced != total"
        assert all(b.ref_count == 0 for b in self._free.values()), "referenced block in free queue"
        for block_hash, block in self._cached.items():
            assert block.block_hash == block_hash, f"hash map disagrees with block {block.block_id}"
        hashed = sum(1 for b in self.blocks if b.block_hash is not None)
        assert hashed == len(self._cached), "a hashed block is missing from the hash map"
