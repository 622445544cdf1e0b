"""The simulated engine: the real block pool, prefix cache and scheduler, with a latency model
in place of the forward pass (`warmroute engine --model sim`).

`SimRunner` implements the scheduler's `ModelRunner` protocol. Prefill sleeps for the prompt
tokens the prefix cache did not cover, a decode step sleeps once for the whole batch, and
sampling returns deterministic ids that depend on the prompt (never EOS, so `max_tokens` ends
every answer). Sleeping on the scheduler's worker thread costs no CPU, so dozens of simulated
engines share two cores. Nothing here imports torch.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from typing import Any

from warmroute.config import EngineConfig
from warmroute.engine.block_pool import Block
from warmroute.engine.sequence import Sequence
from warmroute.engine.sim_profile import CPU, SimProfile
from warmroute.engine.sim_tokenizer import FIRST_WORD_ID, SimTokenizer

SIM_CONTEXT_LEN = 262_144
SIM_DTYPE = "sim"
SEED_WINDOW = 64
MASK64 = (1 << 64) - 1


def mix64(value: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread integer hash."""
    value = (value + 0x9E3779B97F4A7C15) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


class SimRunner:
    """Latency model of a runner; the sequences' KV is never materialised."""

    def __init__(
        self,
        profile: SimProfile,
        vocab_size: int,
        block_size: int,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.profile = profile
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.sleep = sleep
        self.prefilled_tokens = 0
        self.decode_steps = 0

    def prefill(self, seq: Sequence, hits: list[Block], end: int) -> Any:
        """Sleep for the prompt tokens of this chunk (up to `end`) the cache did not cover;
        `hits` are full blocks from the cache."""
        computed = seq.num_computed or len(hits) * self.block_size
        self.prefilled_tokens += end - computed
        self.sleep(self.profile.prefill_s(end - computed))
        seq.num_computed = end
        return None

    def decode(self, seqs: list[Sequence]) -> Any:
        """One batched step: about the same cost for a batch of 1 or 16."""
        self.decode_steps += 1
        self.sleep(self.profile.decode_step_s(len(seqs)))
        for seq in seqs:
            seq.num_computed += 1
        return None

    def write_blocks(self, seq: Sequence, to_write: list[tuple[int, Block]]) -> None:
        """No KV to copy: the pool's accounting is the whole cache."""

    def release(self, seq: Sequence) -> None:
        seq.kv = None

    def sample_one(self, logits: Any, seq: Sequence) -> int:
        if seq.generator is None:  # a per-sequence seed from the prompt's tail and length
            tail = seq.prompt_ids[-SEED_WINDOW:]
            seed = zlib.crc32(",".join(map(str, tail)).encode())
            seq.generator = (seed << 32) ^ seq.num_prompt_tokens
        position = len(seq.output_ids)
        span = self.vocab_size - FIRST_WORD_ID
        return FIRST_WORD_ID + mix64(int(seq.generator) * 1_000_003 + position) % span

    def sample_batch(self, logits: Any, seqs: list[Sequence]) -> list[int]:
        return [self.sample_one(logits, seq) for seq in seqs]


def sim_engine_kwargs(config: EngineConfig, profile: SimProfile | None = None) -> dict[str, Any]:
    """`Engine(...)` arguments for a simulated engine built from `config` and `profile`.

    Cache capacity: `--cache-blocks`, else `--cache-gb` at the profile's KV bytes per token,
    else the profile's default number of cached tokens.
    """
    profile = profile or CPU
    if config.cache_blocks is not None:
        num_blocks = config.cache_blocks
    elif config.cache_gb is not None:
        block_bytes = profile.kv_bytes_per_token * config.block_size
        num_blocks = int(config.cache_gb * 2**30) // block_bytes
    else:
        num_blocks = profile.default_cache_tokens // config.block_size
    tokenizer = SimTokenizer()
    return {
        "model_name": config.model_name,
        "dtype": SIM_DTYPE,
        "tokenizer": tokenizer,
        "runner": SimRunner(profile, tokenizer.vocab_size, config.block_size),
        "num_blocks": max(1, num_blocks),
        "block_size": config.block_size,
        "context_len": SIM_CONTEXT_LEN,
        "max_running": config.max_running,
        "max_waiting": config.max_waiting,
        "prefill_chunk": config.prefill_chunk,
        "scheduling_policy": config.scheduling_policy,
    }
