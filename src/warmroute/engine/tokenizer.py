"""The one place where chat messages become token ids and token ids become text.

Multi-turn cache hits need a re-sent assistant reply to tokenize to the very ids that were
generated (the KV was computed for those ids). A model may emit a non-canonical tokenization,
so the tokenizer remembers recent generations (per salt) and splices the generated ids back in
where the rendered text allows it on token boundaries; elsewhere canonical tokenization is used.
A reply continued on another engine (`render_continuation`) comes with the ids it was generated
as, so its prompt is exactly the one the first engine had reached.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from warmroute.errors import InvalidRequest
from warmroute.types import ChatMessage

REMEMBERED_GENERATIONS = 4096


class ChatTokenizer:
    def __init__(self, hf_tokenizer: Any, eos_ids: frozenset[int]) -> None:
        if not getattr(hf_tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template")
        self.hf = hf_tokenizer
        self.eos_ids = eos_ids
        self._generations: OrderedDict[bytes, tuple[int, ...]] = OrderedDict()

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=True))

    def render_text(self, messages: Sequence[ChatMessage], continue_final: bool) -> str:
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        try:
            text = self.hf.apply_chat_template(
                conversation,
                tokenize=False,
                add_generation_prompt=not continue_final,
                continue_final_message=continue_final,
            )
        except ValueError as exc:
            raise InvalidRequest(f"cannot render the conversation: {exc}") from exc
        return str(text)

    def render(
        self, messages: Sequence[ChatMessage], salt: str = "", continue_final: bool = False
    ) -> list[int]:
        """Prompt token ids for `messages`, reusing generated ids for remembered replies."""
        text = self.render_text(messages, continue_final)
        encoding = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(encoding["input_ids"])
        offsets: list[tuple[int, int]] = [tuple(o) for o in encoding["offset_mapping"]]
        cursor = 0
        for message in messages:
            if message.role != "assistant" or not message.content:
                continue
            start = text.find(message.content, cursor)
            if start < 0:
                continue
            end = start + len(message.content)
            cursor = end
            generated = self._generations.get(self._memo_key(salt, message.content))
            if generated is not None:
                ids, offsets = _splice(ids, offsets, start, end, generated)
        return ids

    def render_continuation(
        self, messages: Sequence[ChatMessage], salt: str, generated: Sequence[int]
    ) -> list[int] | None:
        """The prompt that continues the final assistant message from the very ids it was
        generated as: the conversation before it with the generation prompt, then `generated`.
        None when `generated` does not decode to text that starts with that message's content
        (the caller then renders the text canonically)."""
        final = messages[-1]
        if final.role != "assistant" or not self.decode(generated).startswith(final.content):
            return None
        return self.render(messages[:-1], salt) + list(generated)

    def remember_generation(self, salt: str, text: str, ids: Sequence[int]) -> None:
        """Record that `ids` were generated for `text`, if they decode back to it exactly."""
        if not text or self.decode(ids) != text:
            return
        key = self._memo_key(salt, text)
        self._generations[key] = tuple(ids)
        self._generations.move_to_end(key)
        while len(self._generations) > REMEMBERED_GENERATIONS:
            self._generations.popitem(last=False)

    @staticmethod
    def _memo_key(salt: str, text: str) -> bytes:
        return hashlib.sha256(salt.encode() + b"\0" + text.encode()).digest()


def _splice(
    ids: list[int],
    offsets: list[tuple[int, int]],
    start: int,
    end: int,
    replacement: Sequence[int],
) -> tuple[list[int], list[tuple[int, int]]]:
    """Replace the tokens covering text[start:end] when token boundaries fall exactly there."""
    first = next((i for i, (s, _) in enumerate(offsets) if s == start), None)
    last = next((i for i, (_, e) in enumerate(offsets) if e == end and i >= (first or 0)), None)
    if first is None or last is None:
        return ids, offsets
    # Offsets of the spliced tokens are unknown; mark them with the span so later finds skip it.
    span = [(start, end)] * len(replacement)
    return (
        ids[:first] + list(replacement) + ids[last + 1 :],
        offsets[:first] + span + offsets[last + 1 :],
    )


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas, holding back what may still change.

    Text is held back while it ends in an incomplete UTF-8 sequence, or while its tail could be
    the start of a stop string. `finished_by_stop` is set when a stop string appears; the text
    is cut before it. `take_ids` hands out, with each released delta, the ids added since the
    previous one: exactly the tokens whose text has been released so far, plus those whose
    text is still held back.

    A continuation starts from the state the first generation had reached: `prefix_ids` (the
    ids already handed out) of which the first `released` characters have been sent; the rest
    of their text is released with the next delta.
    """

    def __init__(
        self,
        tokenizer: ChatTokenizer,
        stop: Sequence[str],
        prefix_ids: Sequence[int] = (),
        released: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = list(prefix_ids)
        self.text = tokenizer.decode(self.ids) if self.ids else ""
        self.emitted = min(released, len(self.text))
        self.handed_out = len(self.ids)
        self.finished_by_stop = False
        for stop_string in self.stop:  # the prefix may already end the answer
            cut = self.text.find(stop_string)
            if cut >= 0:
                self.text = self.text[: max(cut, self.emitted)]
                self.finished_by_stop = True
                break

    def take_ids(self) -> list[int]:
        """The ids added since the last call (call it with each delta released)."""
        taken = self.ids[self.handed_out :]
        self.handed_out = len(self.ids)
        return taken

    def add(self, token_id: int) -> str:
        """Add one generated token and return the text that is now safe to send."""
        if token_id in self.tokenizer.eos_ids:
            return ""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids)
        for stop in self.stop:
            cut = self.text.find(stop)
            if cut >= 0:
                self.text = self.text[:cut]
                self.finished_by_stop = True
                return self._release(len(self.text))
        safe = len(self.text)
        if self.text.endswith("\ufffd"):
            safe = len(self.text.rstrip("\ufffd"))
        for stop in self.stop:
            for k in range(min(len(stop) - 1, safe), 0, -1):
                if self.text[:safe].endswith(stop[:k]):
                    safe -= k
                    break
        return self._release(safe)

    def flush(self) -> str:
        """At the end of generation everything left is final."""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        delta = self.text[self.emitted : upto]
        self.emitted = upto
        return delta
