"""Deterministic filler text: one word per token of the simulated engine's tokenizer.

Words come from a fixed vocabulary of short pseudo-words, so any process regenerates the same
text from the same seed. `BlockText` expands a trace's block id into its run of 512 words (a
partial last block is the start of that run), so equal block ids give equal prompt prefixes.
"""

from __future__ import annotations

import random
from collections import OrderedDict

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
SYLLABLES = tuple(c + v for c in CONSONANTS for v in VOWELS)
VOCAB = tuple(
    SYLLABLES[i % len(SYLLABLES)] + SYLLABLES[(i // len(SYLLABLES)) % len(SYLLABLES)]
    for i in range(4096)
)
TRACE_BLOCK_TOKENS = 512


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(VOCAB, k=max(0, n)))


def seeded_words(seed: str, n: int) -> str:
    """`n` words that depend only on `seed` (a string, so no per-process hash salt applies)."""
    return words(random.Random(seed), n)


class BlockText:
    """Text for trace block ids, with a bounded memo (blocks recur across a conversation)."""

    def __init__(self, block_tokens: int = TRACE_BLOCK_TOKENS, memo_blocks: int = 4096) -> None:
        self.block_tokens = block_tokens
        self.memo_blocks = memo_blocks
        self._memo: OrderedDict[int, list[str]] = OrderedDict()

    def block(self, block_id: int, n_words: int | None = None) -> list[str]:
        """The first `n_words` (default all) words of block `block_id`'s run."""
        run = self._memo.get(block_id)
        if run is None:
            run = random.Random(f"block-{block_id}").choices(VOCAB, k=self.block_tokens)
            self._memo[block_id] = run
            if len(self._memo) > self.memo_blocks:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(block_id)
        return run if n_words is None else run[:n_words]

    def prompt(self, hash_ids: tuple[int, ...], input_length: int) -> list[str]:
        """Words for a whole prompt: full runs, then the part of the last block the length
        leaves (`input_length` words in all, or fewer if the ids cannot cover it)."""
        out: list[str] = []
        for index, block_id in enumerate(hash_ids):
            left = input_length - index * self.block_tokens
            if left <= 0:
                break
            out += self.block(block_id, min(left, self.block_tokens))
        return out
