"""Tokenizers of the models this machine holds, for the gateway's own tokenize service.

A built-in model's tokenizer (created on first use under `WARMROUTE_HOME`) or a local model
folder's; anything else is `NotFound`. Loaded lazily: transformers only when one is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from warmroute.config import warmroute_home
from warmroute.errors import NotFound


def local_tokenizer(model: str) -> Any:
    """The tokenizer of a built-in model or a model folder on this machine (for TokenizeText)."""
    from transformers import PreTrainedTokenizerFast

    from warmroute.engine.builtin import builtin_path, is_builtin  # torch: only when asked

    if is_builtin(model):
        return PreTrainedTokenizerFast.from_pretrained(builtin_path(model, warmroute_home()))
    if Path(model).is_dir():
        return PreTrainedTokenizerFast.from_pretrained(model)
    raise NotFound(f"no tokenizer is available here for model {model!r}")
