"""A word-level hashing tokenizer with a ChatML-like render, for the simulated engine.

One whitespace-separated word is one token: `t<N>` (N < vocab) is token N itself, any other
word is `3 + crc32(word) mod (vocab - 3)`; ids 0-2 are the specials. So equal text gives equal
ids in every process (no per-process hash seed), token counts are predictable (a text of k words
is k tokens), and `decode` writes ids as `t<N>` words, which re-encode to the same ids: a
re-sent assistant reply hits the cache on exactly the tokens that were generated. No
transformers, no torch.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

from warmroute.engine.tokenizer import ChatTokenizer
from warmroute.types import ChatMessage

VOCAB_SIZE = 1 << 20
ENDOFTEXT, IM_START, IM_END = 0, 1, 2
SPECIALS = {"<|endoftext|>": ENDOFTEXT, "<|im_start|>": IM_START, "<|im_end|>": IM_END}
FIRST_WORD_ID = len(SPECIALS)
MEMO_LIMIT = 1 << 18
_DIRECT = re.compile(r"t(\d{1,7})")


class SimTokenizer(ChatTokenizer):
    """Duck-types `ChatTokenizer` (`render`, `render_text`, `encode`, `decode`, ...)."""

    def __init__(self, vocab_size: int = VOCAB_SIZE) -> None:  # no HF tokenizer: no super()
        if vocab_size <= FIRST_WORD_ID:
            raise ValueError("the vocabulary must be larger than the special tokens")
        self._vocab_size = vocab_size
        self.eos_ids = frozenset({IM_END, ENDOFTEXT})
        self._memo: dict[str, int] = {}

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def word_id(self, word: str) -> int:
        found = self._memo.get(word)
        if found is not None:
            return found
        if word in SPECIALS:
            token = SPECIALS[word]
        else:
            direct = _DIRECT.fullmatch(word)
            if direct is not None and FIRST_WORD_ID <= int(direct[1]) < self._vocab_size:
                token = int(direct[1])
            else:
                span = self._vocab_size - FIRST_WORD_ID
                token = FIRST_WORD_ID + zlib.crc32(word.encode()) % span
        if len(self._memo) >= MEMO_LIMIT:
            self._memo.clear()
        self._memo[word] = token
        return token

    def encode(self, text: str) -> list[int]:
        return [self.word_id(word) for word in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(f"t{i}" for i in ids if i >= FIRST_WORD_ID)

    def render_text(self, messages: Sequence[ChatMessage], continue_final: bool) -> str:
        parts = [f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages]
        if continue_final and parts:
            parts[-1] = parts[-1].removesuffix("<|im_end|>\n")
        elif not continue_final:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    def render(
        self,
        messages: Sequence[ChatMessage],
        salt: str = "",
        continue_final: bool = False,
        limit: int | None = None,
    ) -> list[int]:
        """`<|im_start|> role words... <|im_end|>` per message, then `<|im_start|> assistant`."""
        ids: list[int] = []
        for index, message in enumerate(messages):
            ids.append(IM_START)
            ids.append(self.word_id(message.role))
            ids.extend(self.encode(message.content))
            if not (continue_final and index == len(messages) - 1):
                ids.append(IM_END)
        if not continue_final:
            ids += [IM_START, self.word_id("assistant")]
        return ids

    def remember_generation(self, salt: str, text: str, ids: Sequence[int]) -> None:
        """Nothing to remember: generated ids always re-encode to themselves."""
