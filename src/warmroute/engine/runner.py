"""The model runner: forward passes, KV movement between sequences and the block store, sampling.

With `engine/model.py` this is the torch side of the engine. KV layout per sequence is one
tensor [layers, 2, kv_heads, capacity, head_dim]; the block store is one preallocated tensor
[num_blocks, layers, 2, kv_heads, block_size, head_dim] indexed by block id (allocated lazily by
the OS, so an unused capacity costs no memory). Called from the scheduler's worker thread only.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any

import torch
from transformers import DynamicCache

from warmroute.engine.block_pool import Block
from warmroute.engine.model import DTYPES, LoadedModel
from warmroute.engine.sequence import Sequence

INITIAL_OUTPUT_ROOM = 256


class Runner:
    def __init__(self, loaded: LoadedModel, num_blocks: int, block_size: int) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.block_size = block_size
        self.dtype = DTYPES[loaded.dtype]
        self.kv_shape = (loaded.num_layers, 2, loaded.num_kv_heads, loaded.head_dim)
        layers, two, heads, dim = self.kv_shape
        self.store = torch.empty(
            (num_blocks, layers, two, heads, block_size, dim), dtype=self.dtype
        )

    # -- per-sequence KV ----------------------------------------------------------------------

    def _ensure_room(self, seq: Sequence, needed: int) -> None:
        capacity = 0 if seq.kv is None else seq.kv.shape[3]
        if needed <= capacity:
            return
        layers, two, heads, dim = self.kv_shape
        new_capacity = max(needed, 2 * capacity, needed + INITIAL_OUTPUT_ROOM)
        grown = torch.empty((layers, two, heads, new_capacity, dim), dtype=self.dtype)
        if seq.kv is not None and seq.num_computed:
            grown[:, :, :, : seq.num_computed] = seq.kv[:, :, :, : seq.num_computed]
        seq.kv = grown

    def release(self, seq: Sequence) -> None:
        seq.kv = None

    @staticmethod
    def _views(kv: Any, length: int) -> DynamicCache:
        """A DynamicCache over views of [layers, 2, (batch,) heads, T, dim]; nothing is copied."""
        per_layer = [(kv[i, 0], kv[i, 1]) for i in range(kv.shape[0])]
        if kv.dim() == 5:  # one sequence: add the batch dimension
            per_layer = [(k[None, :, :length], v[None, :, :length]) for k, v in per_layer]
        cache = DynamicCache(ddp_cache_data=[(k[..., :1, :], v[..., :1, :]) for k, v in per_layer])
        for layer, (k, v) in zip(cache.layers, per_layer, strict=True):
            layer.keys, layer.values = k, v
        return cache

    # -- forward passes -----------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, seq: Sequence, hits: Seq[Block], end: int) -> torch.Tensor:
        """Compute the prompt up to `end` (a chunk): the first chunk restores the hit blocks'
        KV and starts after them, a later one where the last stopped. Returns the logits [V]
        of the chunk's last token."""
        prompt = seq.prompt_ids
        start = seq.num_computed
        if not start:
            self._ensure_room(seq, len(prompt) + 1)
            start = len(hits) * self.block_size
            if hits:
                ids = torch.tensor([b.block_id for b in hits])
                gathered = self.store.index_select(0, ids)  # [n, L, 2, H, bs, D]
                layers, two, heads, dim = self.kv_shape
                seq.kv[:, :, :, :start] = gathered.permute(1, 2, 3, 0, 4, 5).reshape(
                    layers, two, heads, start, dim
                )
        cache = self._views(seq.kv, start) if start else DynamicCache()
        out = self.model(
            input_ids=torch.tensor([prompt[start:end]]),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._copy_back(seq, out.cache, start, end)
        seq.num_computed = end
        last: torch.Tensor = out.logits[0, -1].float()
        return last

    @torch.inference_mode()
    def decode(self, seqs: Seq[Sequence]) -> torch.Tensor:
        """Feed each sequence's last output token, batched; return next-token logits [B, V]."""
        lengths = [s.num_computed for s in seqs]
        for seq in seqs:
            self._ensure_room(seq, seq.num_computed + 1)
        tokens = torch.tensor([[s.output_ids[-1]] for s in seqs])
        if len(seqs) == 1:
            out = self.model(
                input_ids=tokens, cache=self._views(seqs[0].kv, lengths[0]),
                use_cache=True, logits_to_keep=1,
            )
        else:
            out = self.model(**self._batch_inputs(seqs, lengths, tokens))
        new_k = torch.stack([layer.keys[:, :, -1] for layer in out.cache.layers])  # [L, B, H, D]
        new_v = torch.stack([layer.values[:, :, -1] for layer in out.cache.layers])
        for b, seq in enumerate(seqs):
            seq.kv[:, 0, :, seq.num_computed] = new_k[:, b]
            seq.kv[:, 1, :, seq.num_computed] = new_v[:, b]
            seq.num_computed += 1
        logits: torch.Tensor = out.logits[:, -1].float()
        return logits

    def _batch_inputs(
        self, seqs: Seq[Sequence], lengths: list[int], tokens: torch.Tensor
    ) -> dict[str, Any]:
        """Left-pad every sequence's KV to the longest, with the matching mask and positions."""
        longest = max(lengths)
        layers, two, heads, dim = self.kv_shape
        batch = torch.zeros((layers, two, len(seqs), heads, longest, dim), dtype=self.dtype)
        mask = torch.zeros((len(seqs), longest + 1), dtype=torch.long)
        for b, (seq, length) in enumerate(zip(seqs, lengths, strict=True)):
            batch[:, :, b, :, longest - length :] = seq.kv[:, :, :, :length]
            mask[b, longest - length :] = 1
        return {
            "input_ids": tokens,
            "cache": self._views(batch, longest),
            "attention_mask": mask,
            "position_ids": torch.tensor([[length] for length in lengths]),
            "use_cache": True,
            "logits_to_keep": 1,
        }

    @staticmethod
    def _copy_back(seq: Sequence, cache: DynamicCache, start: int, end: int) -> None:
        for i, layer in enumerate(cache.layers):
            seq.kv[i, 0, :, start:end] = layer.keys[0, :, start:end]
            seq.kv[i, 1, :, start:end] = layer.values[0, :, start:end]

    # -- the block store ----------------------------------------------------------------------

    def write_blocks(self, seq: Sequence, to_write: Seq[tuple[int, Block]]) -> None:
        """Copy the sequence's KV for block index i into store slot block.block_id."""
        bs = self.block_size
        for index, block in to_write:
            self.store[block.block_id] = seq.kv[:, :, :, index * bs : (index + 1) * bs]

    # -- sampling -----------------------------------------------------------------------------

    def sample_batch(self, logits: torch.Tensor, seqs: Seq[Sequence]) -> list[int]:
        if all(s.sampling.temperature <= 0.0 for s in seqs):
            return [int(t) for t in logits.argmax(dim=-1)]
        return [self.sample_one(row, seq) for row, seq in zip(logits, seqs, strict=True)]

    @staticmethod
    def sample_one(logits: torch.Tensor, seq: Sequence) -> int:
        params = seq.sampling
        if params.temperature <= 0.0:
            return int(logits.argmax())
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(0) - sorted_probs < params.top_p
            keep[0] = True
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        if seq.generator is None:
            seq.generator = torch.Generator()
            if params.seed is not None:
                seq.generator.manual_seed(params.seed)
            else:
                seq.generator.seed()
        return int(torch.multinomial(probs, 1, generator=seq.generator))
