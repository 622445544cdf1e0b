"""The one place where chat messages become token ids and token ids become text.

Multi-turn cache hits need a re-sent assistant reply to tokenize to the very ids that were
generated (the KV was computed for those ids). A model may emit a non-canonical tokenization,
so the tokenizer remembers recent generations (per salt) and splices the generated ids back in
where the rendered text allows it on token boundaries; elsewhere canonical tokenization is used.
A reply continued on another engine (`render_continuation`) comes with the ids it was generated
as, so its prompt is exactly the one the first engine had reached.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from warmroute.errors import ContextTooLong, InvalidRequest
from warmroute.types import ChatMessage

REMEMBERED_GENERATIONS = 4096
SEARCH_WINDOW = 1024  # template characters around one message's content, at most
NORMALIZER_MARGIN = 4
UTF8_MAX_TOKENS = 4  # an incomplete character is split over at most this many byte tokens


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

    @functools.cached_property
    def max_chars_per_token(self) -> int:
        """No token covers more characters of text than this (with a normalizer, which may fold
        several characters into one, a margin of 4 is added)."""
        longest = max((len(token) for token in self.hf.get_vocab()), default=1)
        normalizer = getattr(getattr(self.hf, "backend_tokenizer", None), "normalizer", None)
        return max(1, longest) * (1 if normalizer is None else NORMALIZER_MARGIN)

    def render(
        self,
        messages: Sequence[ChatMessage],
        salt: str = "",
        continue_final: bool = False,
        limit: int | None = None,
    ) -> list[int]:
        """Prompt token ids for `messages`, reusing generated ids for remembered replies.
        Linear in the prompt: replies are found in order and spliced in one pass. With `limit`,
        a text too long to fit in `limit` tokens raises `ContextTooLong` before tokenizing."""
        text = self.render_text(messages, continue_final)
        least = len(text) // self.max_chars_per_token
        if limit is not None and least >= limit:
            raise ContextTooLong(
                f"the prompt has at least {least} tokens; this model's context is {limit} tokens"
            )
        encoding = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(encoding["input_ids"])
        spans = self._remembered_spans(text, messages, salt)
        if not spans:
            return ids
        return _splice(ids, [tuple(o) for o in encoding["offset_mapping"]], spans)

    def _remembered_spans(
        self, text: str, messages: Sequence[ChatMessage], salt: str
    ) -> list[tuple[int, int, tuple[int, ...]]]:
        """(start, end, generated ids) of each remembered reply in `text`, in text order.

        Each reply is looked for after the previous one found, no further than the messages
        in between and `SEARCH_WINDOW` characters of template per message could reach, so no
        stretch of the text is searched twice unless a reply is not found where expected."""
        spans: list[tuple[int, int, tuple[int, ...]]] = []
        cursor = budget = 0
        for message in messages:
            budget += len(message.content) + SEARCH_WINDOW
            if message.role != "assistant" or not message.content or not self._generations:
                continue
            generated = self._generations.get(self._memo_key(salt, message.content))
            if generated is None:
                continue
            start = text.find(message.content, cursor, cursor + budget)
            if start >= 0:
                cursor, budget = start + len(message.content), 0
                spans.append((start, cursor, generated))
        return spans

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
        joined = salt + "\0" + text
        return hashlib.sha256(joined.encode("utf-8", "surrogatepass")).digest()


def _splice(
    ids: list[int],
    offsets: list[tuple[int, int]],
    spans: Sequence[tuple[int, int, Sequence[int]]],
) -> list[int]:
    """`ids` with the tokens covering text[start:end] replaced, for each span (in text order)
    where token boundaries fall exactly at both ends; one pass over `ids`."""
    starts = [start for start, _ in offsets]
    ends = [end for _, end in offsets]
    spliced: list[int] = []
    taken = 0  # ids[:taken] are settled
    for start, end, replacement in spans:
        first = bisect.bisect_left(starts, start, taken)
        last = bisect.bisect_right(ends, end, first) - 1  # the last token ending at `end`
        if first == len(ids) or starts[first] != start or last < first or ends[last] != end:
            continue
        spliced += ids[taken:first]
        spliced += replacement
        taken = last + 1
    spliced += ids[taken:]
    return spliced


class StopMatcher:
    """Knuth-Morris-Pratt over one stop string. Fed the text as it grows, it knows the longest
    prefix of the stop string that the text ends with (`state`: what must be held back), so
    each character costs O(1) amortised, whatever the lengths of the stop string and text."""

    def __init__(self, stop: str) -> None:
        self.stop = stop
        self.state = 0
        self.failure = [0] * len(stop)  # failure[i]: longest proper border of stop[: i + 1]
        border = 0
        for i in range(1, len(stop)):
            while border and stop[i] != stop[border]:
                border = self.failure[border - 1]
            if stop[i] == stop[border]:
                border += 1
            self.failure[i] = border

    def feed(self, text: str) -> int:
        """Feed `text`; the index in it just past the first full match, else -1."""
        stop, failure, state = self.stop, self.failure, self.state
        for i, char in enumerate(text):
            while state and stop[state] != char:
                state = failure[state - 1]
            if stop[state] == char:
                state += 1
                if state == len(stop):
                    self.state = failure[state - 1]
                    return i + 1
        self.state = state
        return -1


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas, holding back what may still change.

    Text is held back while it ends in an incomplete UTF-8 sequence, or while its tail could be
    the start of a stop string. `finished_by_stop` is set when a stop string appears; the text
    is cut before it. `take_ids` hands out, with each released delta, the ids added since the
    previous one: exactly the tokens whose text has been released so far, plus those whose
    text is still held back.

    Each token costs work proportional to its own text, not to the text so far: only a window
    of ids is decoded (the tokens since the last complete text, after the previous token as
    context, as vLLM does), and stop strings are matched by `StopMatcher`s fed the new text.

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
        self.matchers = [StopMatcher(s) for s in self.stop]
        self.ids: list[int] = list(prefix_ids)
        self.handed_out = len(self.ids)
        self.finished_by_stop = False
        self.text = ""
        self.emitted = released
        complete = _complete_prefix(tokenizer, self.ids)
        # ids[: self._read] are in `text`; a window decodes from self._window (context).
        self._read = complete
        self._window = max(0, complete - 1)
        self._append(tokenizer.decode(self.ids[:complete]) if complete else "")
        self.emitted = min(released, len(self.text))

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
        if not self.finished_by_stop:
            self._advance(final=False)
        held = 0 if self.finished_by_stop else max((m.state for m in self.matchers), default=0)
        return self._release(len(self.text) - held)

    def flush(self) -> str:
        """At the end of generation everything left is final."""
        if not self.finished_by_stop:
            self._advance(final=True)
        return self._release(len(self.text))

    def _advance(self, final: bool) -> None:
        """Move the new ids' text into `text` once it is complete (always when `final`)."""
        if self._read == len(self.ids):
            return
        decode = self.tokenizer.decode
        window = decode(self.ids[self._window :])
        context = decode(self.ids[self._window : self._read])
        if not final and (len(window) <= len(context) or window.endswith("\ufffd")):
            return  # no text yet, or an incomplete UTF-8 sequence: wait for more ids
        self._window, self._read = self._read, len(self.ids)
        self._append(window[len(context) :])

    def _append(self, new_text: str) -> None:
        start = len(self.text)
        self.text += new_text
        cuts = []
        for matcher in self.matchers:
            end = matcher.feed(new_text)
            if end >= 0:
                cuts.append(start + end - len(matcher.stop))
        if cuts:
            self.text = self.text[: max(min(cuts), self.emitted)]
            self.finished_by_stop = True

    def _release(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        delta = self.text[self.emitted : upto]
        self.emitted = upto
        return delta


def _complete_prefix(tokenizer: ChatTokenizer, ids: Sequence[int]) -> int:
    """How many of `ids` decode to complete text (a few ids fewer when the last ones end in
    an incomplete UTF-8 sequence; all of them when no shorter prefix is complete)."""
    for count in range(len(ids), max(0, len(ids) - UTF8_MAX_TOKENS) - 1, -1):
        if count == 0 or not tokenizer.decode(ids[:count]).endswith("\ufffd"):
            return count
    return len(ids)
