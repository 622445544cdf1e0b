"""Latency profiles of the simulated engine (`--model sim`) and their command-line flags.

A profile is the whole latency model: prefill costs `prefill_ms_per_token` for each prompt token
that is *not* served from the prefix cache; a decode step costs `decode_ms_per_step` for a batch of
one, growing by `decode_growth_per_seq` of that for each extra sequence in the batch (batched
decode is nearly flat: `reference/engine-feasibility.md` §3.3). Cheap to import: no torch, no web;
its command-line flags live with the `engine` command (`app/engine_command.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SimProfile:
    name: str
    prefill_ms_per_token: float
    decode_ms_per_step: float
    decode_growth_per_seq: float
    kv_bytes_per_token: int
    default_cache_tokens: int

    def prefill_s(self, uncached_tokens: int) -> float:
        return max(0, uncached_tokens) * self.prefill_ms_per_token / 1000.0

    def decode_step_s(self, batch: int) -> float:
        growth = 1.0 + self.decode_growth_per_seq * max(0, batch - 1)
        return self.decode_ms_per_step * growth / 1000.0


# Qwen2.5-0.5B shape in bf16 on the 2-core CPU: ~1,000 prefill tok/s; a decode step takes
# 97 ms at batch 1-2, 108 ms at 8 and 127 ms at 16 (+2 % per extra sequence); 12 KiB of KV per
# token, so the engine's default 1 GiB cache holds ~87k tokens.
CPU = SimProfile("cpu", 1.0, 97.0, 0.02, 12 * 1024, 2**30 // (12 * 1024))
# An 8B-class model on one datacenter GPU: ~10k prefill tok/s, 25 ms per decode step nearly flat
# to batch 16, 128 KiB of KV per token and ~32 GiB of it for the prefix cache (262k tokens).
GPU = SimProfile("gpu", 0.1, 25.0, 0.005, 128 * 1024, 32 * 2**30 // (128 * 1024))
PROFILES = {p.name: p for p in (CPU, GPU)}


def sim_profile(
    name: str, prefill_ms_per_token: float | None = None, decode_ms_per_step: float | None = None
) -> SimProfile:
    """The named profile with the given overrides; raises ValueError for negative costs."""
    profile = PROFILES[name]
    if prefill_ms_per_token is not None:
        profile = replace(profile, prefill_ms_per_token=prefill_ms_per_token)
    if decode_ms_per_step is not None:
        profile = replace(profile, decode_ms_per_step=decode_ms_per_step)
    if profile.prefill_ms_per_token < 0 or profile.decode_ms_per_step < 0:
        raise ValueError("simulated latencies must not be negative")
    return profile
