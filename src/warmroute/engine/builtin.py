"""Built-in models: seeded random weights and a locally trained byte-level BPE tokenizer.

`builtin:tiny` (Llama shape, 4 layers, hidden 256) is for tests; `builtin:small` (the shape of
Qwen2.5-0.5B) is for realistic CPU timings. Each is written once as an ordinary Hugging Face
folder under `<home>/models/`, then loaded through `from_pretrained` like real weights. Nothing
is downloaded: the tokenizer is trained on docstrings of the Python standard library.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

RECIPE_VERSION = "2"  # 2: the corpus read in a fresh interpreter; a line break a token
VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS_MODULES = (
    "argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "email", "functools", "http.client", "inspect", "itertools", "json", "logging",
    "os", "pathlib", "pickle", "random", "re", "shutil", "socket", "sqlite3", "string",
    "subprocess", "tempfile", "textwrap", "threading", "typing", "unittest", "urllib.parse",
    "zipfile",
)

BUILTIN_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "arch": "llama",
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 4096,
        "vocab_size": VOCAB_SIZE,
    },
    "small": {
        "arch": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_theta": 1_000_000.0,
        "vocab_size": 151_936,
    },
}


def is_builtin(model: str) -> bool:
    return model.startswith("builtin:")


def corpus() -> Iterator[str]:
    """Deterministic English text: docstrings of a fixed list of standard-library modules.
    Read in a fresh interpreter (`python -I`): a package's namespace holds the submodules
    imported so far, so read in-process the text, and so the tokenizer, depended on what the
    caller had imported (a test run's other modules changed builtin:tiny's tokens)."""
    out = subprocess.run(
        [sys.executable, "-I", "-c", CORPUS_SCRIPT, json.dumps(CORPUS_MODULES)],
        check=True, capture_output=True, text=True, encoding="utf-8",
    ).stdout
    yield from json.loads(out)


CORPUS_SCRIPT = """
import importlib, inspect, json, sys
out = []
for name in json.loads(sys.argv[1]):
    module = importlib.import_module(name)
    for _, member in sorted(vars(module).items()):
        doc = inspect.getdoc(member) if callable(member) or inspect.ismodule(member) else None
        if doc:
            out.append(doc)
    if module.__doc__:
        out.append(module.__doc__)
json.dump(out, sys.stdout)
"""


def train_tokenizer() -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # A line break is a token of its own (as Qwen's pre-tokenizer keeps it from the spaces that
    # follow): the chat template's "assistant\n" then reads the same in the prompt that asked
    # for a reply and in the next turn's, where the reply follows it (a reply that began with
    # spaces merged with it, and the first turn's last block was no longer the same block).
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    return hf_tok


def _config(shape: dict[str, Any], tokenizer: PreTrainedTokenizerFast) -> Any:
    from transformers import LlamaConfig, Qwen2Config

    fields = {k: v for k, v in shape.items() if k != "arch"}
    common = {
        "tie_word_embeddings": True,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "bos_token_id": None,
    }
    if shape["arch"] == "llama":
        return LlamaConfig(**fields, **common)
    return Qwen2Config(**fields, **common)


def builtin_path(model: str, home: Path) -> Path:
    """Create the built-in model's folder once (atomically) and return it."""
    name = model.removeprefix("builtin:")
    if name not in BUILTIN_SHAPES:
        raise ValueError(f"unknown built-in model {model!r}; known: {sorted(BUILTIN_SHAPES)}")
    target = home / "models" / f"builtin-{name}-v{RECIPE_VERSION}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _write_builtin(BUILTIN_SHAPES[name], staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_builtin(shape: dict[str, Any], folder: Path) -> None:
    """Train the tokenizer and write seeded weights (torch and the model classes are imported
    here: a process that only reads a built-in model's tokenizer never loads them)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = train_tokenizer()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if shape["arch"] == "qwen2" else torch.float32
    model = AutoModelForCausalLM.from_config(_config(shape, tokenizer), dtype=dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
