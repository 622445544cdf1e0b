"""Tokenizers of the models this machine holds, for the gateway's own tokenize service.

A built-in model's tokenizer (created on first use under `WARMROUTE_HOME`) or a local model
folder's; anything else is `NotFound`. Loaded lazily (transformers only when one is asked for)
and kept. `tokenize` gives each token's id, text and bytes (a byte-level BPE token's own bytes,
which may be part of a character), tokenized as the engine tokenizes a message's content.
`tokenize_served` is what the surfaces call: only a model the healthy engines serve (never a
folder or a built-in model named by a caller), at most `MAX_TOKENIZE_CHARS` of text, loading and
tokenizing on a worker thread; a tokenizer that cannot be loaded here is `NotFound`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmroute.config import warmroute_home
from warmroute.errors import InvalidRequest, NotFound

MAX_TOKENIZE_CHARS = 2**20


@dataclass(frozen=True)
class TokenPiece:
    token_id: int
    string_token: str
    token_bytes: bytes


@functools.lru_cache(maxsize=8)
def local_tokenizer(model: str) -> Any:
    """The tokenizer of a built-in model or a model folder on this machine (for TokenizeText)."""
    from transformers import PreTrainedTokenizerFast

    from warmroute.engine.builtin import builtin_path, is_builtin  # no torch: tokenizer only

    if is_builtin(model):
        return PreTrainedTokenizerFast.from_pretrained(builtin_path(model, warmroute_home()))
    if Path(model).is_dir():
        return PreTrainedTokenizerFast.from_pretrained(model)
    raise NotFound(f"no tokenizer is available here for model {model!r}")


async def tokenize_served(
    served: list[str], model: str | None, text: str, tokenizer_for: Callable[[str], Any]
) -> tuple[str, list[TokenPiece]]:
    """The model's name (the first served when none is named) and `text`'s tokens."""
    name = model or (served[0] if served else None)
    if name is None:
        raise NotFound("no model is being served; name one in `model`")
    if name not in served:
        raise NotFound(f"The model {name!r} is not served here")
    if len(text) > MAX_TOKENIZE_CHARS:
        raise InvalidRequest(f"text may have at most {MAX_TOKENIZE_CHARS} characters to "
                             f"tokenize, got {len(text)}")

    def load_and_tokenize() -> list[TokenPiece]:
        try:
            tokenizer = tokenizer_for(name)
        except (OSError, ValueError, ImportError) as exc:
            raise NotFound(f"no tokenizer is available here for model {name!r}") from exc
        return tokenize(tokenizer, text)

    return name, await asyncio.to_thread(load_and_tokenize)


def tokenize(tokenizer: Any, text: str) -> list[TokenPiece]:
    ids = [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]
    return [TokenPiece(i, str(tokenizer.decode([i])), token_bytes(tokenizer, i)) for i in ids]


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The bytes a token stands for: through the byte-level alphabet for a byte-level BPE's
    own tokens, else the UTF-8 of its decoded text (added tokens, other tokenizers)."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    added = getattr(tokenizer, "added_tokens_decoder", {})
    if type(decoder).__name__ == "ByteLevel" and token_id not in added:
        piece = str(tokenizer.convert_ids_to_tokens(token_id))
        alphabet = byte_alphabet()
        if all(ch in alphabet for ch in piece):
            return bytes(alphabet[ch] for ch in piece)
    return str(tokenizer.decode([token_id])).encode()


@functools.cache
def byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character → byte (`bytes_to_unicode` inverted)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    pairs = [(chr(b), b) for b in printable] + [(chr(256 + n), b) for n, b in enumerate(shifted)]
    return dict(pairs)
