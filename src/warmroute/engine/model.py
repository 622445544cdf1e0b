"""Load a causal LM and its tokenizer: built-in, a local Hugging Face folder, or a hub id.

Every path ends in `from_pretrained` on a folder, so the built-in models exercise the same code
as real weights. The dtype `auto` picks bfloat16 where the CPU has native bf16 (AVX512-BF16 or
AMX), float32 elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from warmroute.engine.builtin import builtin_path, is_builtin
from warmroute.engine.tokenizer import ChatTokenizer

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str) -> str:
    if dtype == "auto":
        return "bfloat16" if cpu_has_bf16() else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}")
    return dtype


@dataclass
class LoadedModel:
    """A model ready to run, with the facts the cache and scheduler need."""

    model: Any
    tokenizer: ChatTokenizer
    dtype: str
    context_len: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    source: str

    @property
    def kv_bytes_per_token(self) -> int:
        element = torch.finfo(DTYPES[self.dtype]).bits // 8
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * element


def model_folder(model: str, home: Path) -> Path | str:
    """The folder to load from, or a hub id for `from_pretrained` to fetch."""
    if is_builtin(model):
        return builtin_path(model, home)
    path = Path(model)
    if path.is_dir():
        return path
    if "/" in model and not path.exists():
        return model
    raise ValueError(f"model {model!r} is neither builtin:*, a folder, nor ORG/NAME")


def load_model(model: str, dtype: str, home: Path) -> LoadedModel:
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    source = model_folder(model, home)
    dtype_name = resolve_dtype(dtype)
    config = AutoConfig.from_pretrained(source)
    hf_model = AutoModelForCausalLM.from_pretrained(
        source, dtype=DTYPES[dtype_name], attn_implementation="sdpa"
    ).eval()
    # Not AutoTokenizer: it may swap in a model-specific class that re-tokenizes differently.
    hf_tokenizer = PreTrainedTokenizerFast.from_pretrained(source)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    num_heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // num_heads
    loaded = LoadedModel(
        model=hf_model,
        tokenizer=ChatTokenizer(hf_tokenizer, eos_ids=_eos_ids(hf_model, hf_tokenizer)),
        dtype=dtype_name,
        context_len=int(getattr(text_config, "max_position_embeddings", 4096)),
        num_layers=int(text_config.num_hidden_layers),
        num_kv_heads=int(getattr(text_config, "num_key_value_heads", None) or num_heads),
        head_dim=int(head_dim),
        source=str(source),
    )
    _warm_up(loaded)
    return loaded


def _eos_ids(hf_model: Any, tokenizer: PreTrainedTokenizerFast) -> frozenset[int]:
    ids: set[int] = set()
    for candidate in (hf_model.generation_config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            ids.add(candidate)
        elif isinstance(candidate, list):
            ids.update(int(c) for c in candidate)
    return frozenset(ids)


def _warm_up(loaded: LoadedModel) -> None:
    """Page the lazily mapped weights in before the first request pays for it."""
    with torch.inference_mode():
        loaded.model(input_ids=torch.tensor([[0, 1]]), use_cache=False, logits_to_keep=1)
