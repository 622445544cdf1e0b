"""Automatic prefix caching over a `BlockPool`: block hashes, longest-prefix lookup, insertion.

Token ids are cut into full blocks of `block_size`; block i's key is
sha256(key(i-1) ‖ salt ‖ token ids of block i), with key(-1) seeded by the model id and dtype.
Equal keys therefore mean equal prefixes under the same model, dtype and tenant salt. This module
knows token ids and block ids only; the runner moves the KV tensors the blocks stand for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from warmroute.engine.block_pool import Block, BlockPool


def hash_seed(model_id: str, dtype: str) -> bytes:
    """The chain's starting key: anything that changes the KV must change it."""
    return hashlib.sha256(f"warmroute-kv\0{model_id}\0{dtype}".encode()).digest()


def extend_block_hashes(
    hashes: list[bytes], token_ids: Sequence[int], block_size: int, salt: str, seed: bytes
) -> list[bytes]:
    """Append the keys of every full block of `token_ids` not yet in `hashes`; returns `hashes`."""
    salt_bytes = salt.encode()
    num_full = len(token_ids) // block_size
    prev = hashes[-1] if hashes else seed
    for i in range(len(hashes), num_full):
        chunk = np.asarray(token_ids[i * block_size : (i + 1) * block_size], dtype="<i4")
        prev = hashlib.sha256(prev + salt_bytes + b"\0" + chunk.tobytes()).digest()
        hashes.append(prev)
    return hashes


def block_hashes(token_ids: Sequence[int], block_size: int, salt: str, seed: bytes) -> list[bytes]:
    return extend_block_hashes([], token_ids, block_size, salt, seed)


class PrefixCache:
    """Lookup and insertion policy on top of a block pool."""

    def __init__(self, pool: BlockPool, block_size: int) -> None:
        self.pool = pool
        self.block_size = block_size

    def lookup(self, hashes: Sequence[bytes], num_prompt_tokens: int) -> list[Block]:
        """Reference and return the longest run of cached blocks at the start of the prompt.

        At least one prompt token is always left to compute, so a prompt of n tokens can hit
        at most (n - 1) // block_size blocks.
        """
        limit = max(0, (num_prompt_tokens - 1) // self.block_size)
        hits: list[Block] = []
        for block_hash in hashes[:limit]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        self.pool.touch(hits)
        return hits

    def insert(self, held: list[Block], hashes: Sequence[bytes]) -> list[tuple[int, Block]]:
        """Extend `held` (block i holds block i's tokens) to cover `hashes`, as room allows.

        A key already cached (say by a concurrent request) is shared, not duplicated. Returns the
        (block index, block) pairs whose KV the caller must write now, before anything else can
        look them up.
        """
        to_write: list[tuple[int, Block]] = []
        for index in range(len(held), len(hashes)):
            block = self.pool.get_cached_block(hashes[index])
            if block is not None:
                self.pool.touch([block])
            elif self.pool.can_allocate(1):
                block = self.pool.get_new_blocks(1)[0]
                self.pool.cache_block(block, hashes[index])
                to_write.append((index, block))
            else:
                break
            held.append(block)
        return to_write

    def release(self, held: list[Block]) -> None:
        """Drop a finished request's references, its last block first in eviction order."""
        self.pool.free_blocks(list(reversed(held)))
        held.clear()
