"""The chat tokenizer: rendering, generated-id splicing for multi-turn hits, and incremental
detokenization with stop strings and incomplete UTF-8."""

from __future__ import annotations

import random
import time

import pytest

from warmroute.config import EngineConfig
from warmroute.engine.builtin import builtin_path
from warmroute.engine.limits import MAX_STOP_CHARS
from warmroute.engine.tokenizer import ChatTokenizer, IncrementalDetokenizer, StopMatcher
from warmroute.types import ChatMessage


@pytest.fixture(scope="module")
def tok(tiny_config: EngineConfig) -> ChatTokenizer:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(builtin_path("builtin:tiny", tiny_config.home))
    return ChatTokenizer(hf, eos_ids=frozenset({hf.convert_tokens_to_ids("<|im_end|>")}))


def test_chatml_rendering(tok: ChatTokenizer) -> None:
    text = tok.render_text([ChatMessage("system", "S"), ChatMessage("user", "U")], False)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n" \
                   "<|im_start|>assistant\n"
    assert tok.decode(tok.render([ChatMessage("user", "U")])) == "user\nU\nassistant\n"


def test_continue_final_message_leaves_reply_open(tok: ChatTokenizer) -> None:
    messages = [ChatMessage("user", "U"), ChatMessage("assistant", "The answer is")]
    text = tok.render_text(messages, continue_final=True)
    assert text.endswith("<|im_start|>assistant\nThe answer is")


def test_non_ascii_round_trip(tok: ChatTokenizer) -> None:
    text = "naïve café — 東京 🚀"
    assert tok.decode(tok.encode(text)) == text


def test_remembered_generation_is_spliced_back(tok: ChatTokenizer) -> None:
    # A non-canonical tokenization of "hello world": one token per character.
    reply = "hello world"
    generated = [tok.encode(ch)[0] for ch in reply]
    assert generated != tok.encode(reply)
    messages = [ChatMessage("user", "hi"), ChatMessage("assistant", reply),
                ChatMessage("user", "more")]
    canonical = tok.render(messages, salt="s")
    tok.remember_generation("s", reply, generated)
    spliced = tok.render(messages, salt="s")
    assert spliced != canonical
    assert tok.decode(spliced) == tok.decode(canonical)
    prompt_before = tok.render([ChatMessage("user", "hi")], salt="s")
    assert spliced[: len(prompt_before) + len(generated)] == prompt_before + generated
    # Another tenant's salt does not see this memory.
    assert tok.render(messages, salt="other") == canonical


def test_generation_not_remembered_when_ids_disagree(tok: ChatTokenizer) -> None:
    tok.remember_generation("t", "abc", tok.encode("xyz"))
    messages = [ChatMessage("user", "q"), ChatMessage("assistant", "abc")]
    assert tok.render(messages, salt="t") == tok.render(messages, salt="")


def feed(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    return [detok.add(i) for i in ids]


def test_detokenizer_holds_back_stop_prefix(tok: ChatTokenizer) -> None:
    ids = [tok.encode(ch)[0] for ch in "abcXYdef"]
    detok = IncrementalDetokenizer(tok, stop=["XYZ"])
    deltas = feed(detok, ids)
    assert deltas[:3] == ["a", "b", "c"]
    assert deltas[3:5] == ["", ""]  # "X", "XY" could start the stop string
    assert "".join(deltas) + detok.flush() == "abcXYdef"
    assert not detok.finished_by_stop


def test_detokenizer_cuts_at_stop(tok: ChatTokenizer) -> None:
    ids = [tok.encode(ch)[0] for ch in "abcXYZdef"]
    detok = IncrementalDetokenizer(tok, stop=["XYZ"])
    out = ""
    for token in ids:
        out += detok.add(token)
        if detok.finished_by_stop:
            break
    assert out + detok.flush() == "abc"
    assert detok.finished_by_stop


def test_detokenizer_waits_for_complete_utf8(tok: ChatTokenizer) -> None:
    byte_tokens = [tok.hf.convert_tokens_to_ids(t) for t in tok.hf.tokenize("🚀")]
    assert len(byte_tokens) > 1
    detok = IncrementalDetokenizer(tok, stop=[])
    deltas = feed(detok, byte_tokens)
    assert deltas[:-1] == [""] * (len(byte_tokens) - 1)
    assert deltas[-1] == "🚀"


def test_detokenizer_ignores_eos(tok: ChatTokenizer) -> None:
    detok = IncrementalDetokenizer(tok, stop=[])
    eos = next(iter(tok.eos_ids))
    assert detok.add(tok.encode("a")[0]) == "a"
    assert detok.add(eos) == ""
    assert detok.ids == [tok.encode("a")[0]]


def test_detokenized_text_is_the_full_decode(tok: ChatTokenizer) -> None:
    """Decoding a window of ids per token gives exactly the text of decoding them all, byte
    tokens of split characters included."""
    rng = random.Random(13)
    pieces = ["naïve", " café", " 東京", " 🚀", " cache", "\n", " x"]
    ids = [i for _ in range(60) for i in tok.encode(rng.choice(pieces))]
    ids += [rng.randrange(3, tok.vocab_size) for _ in range(300)]  # any bytes, even invalid
    detok = IncrementalDetokenizer(tok, stop=[])
    text = "".join(feed(detok, ids)) + detok.flush()
    assert text == tok.decode(ids) == detok.text


def naive_state(text: str, stop: str) -> int:
    return max((k for k in range(len(stop)) if text.endswith(stop[:k])), default=0)


def test_stop_matcher_agrees_with_a_naive_search() -> None:
    rng = random.Random(5)
    for _ in range(300):
        stop = "".join(rng.choice("ab") for _ in range(rng.randint(1, 6)))
        text = "".join(rng.choice("ab") for _ in range(rng.randint(0, 30)))
        matcher, fed, found = StopMatcher(stop), 0, -1
        while fed < len(text) and found < 0:
            chunk = text[fed : fed + rng.randint(1, 4)]
            end = matcher.feed(chunk)
            found = fed + end if end >= 0 else -1
            fed += len(chunk)
        first = text.find(stop)
        assert found == (first + len(stop) if first >= 0 else -1), (stop, text)
        if found < 0:
            assert matcher.state == naive_state(text, stop), (stop, text)


def test_detokenizer_cuts_at_the_earliest_stop(tok: ChatTokenizer) -> None:
    """Stop strings completed by one token: the cut is before the one that starts first."""
    assert [tok.decode([i]) for i in tok.encode("abcdefgh")] == ["abc", "def", "g", "h"]
    detok = IncrementalDetokenizer(tok, stop=["de", "cdef"])
    out = "".join(feed(detok, tok.encode("abcdefgh")))
    assert detok.finished_by_stop and out + detok.flush() == "ab"


def test_long_stop_strings_cost_time_linear_in_the_text(tok: ChatTokenizer) -> None:
    rng = random.Random(3)
    stops = ["".join(rng.choice("xyz ") for _ in range(MAX_STOP_CHARS)) for _ in range(4)]
    ids = tok.encode(" ".join(rng.choice(["cache", "block", "x", "y z"]) for _ in range(4000)))
    started = time.perf_counter()
    detok = IncrementalDetokenizer(tok, stops)
    text = "".join(feed(detok, ids[:3000])) + detok.flush()
    elapsed = time.perf_counter() - started
    assert text == tok.decode(ids[:3000])
    assert elapsed < 1.0, f"3,000 tokens against 4 stop strings of 256 characters: {elapsed:.2f}s"


def test_many_remembered_replies_are_spliced_in_one_pass(tok: ChatTokenizer) -> None:
    """2,000 re-sent turns, each reply remembered with non-canonical ids: every one spliced."""
    messages: list[ChatMessage] = []
    generated: list[list[int]] = []
    for turn in range(2000):
        reply = f"reply {turn} ok"
        ids = [tok.encode(ch)[0] for ch in reply]
        tok.remember_generation("many", reply, ids)
        messages += [ChatMessage("user", f"question {turn}"), ChatMessage("assistant", reply)]
        generated.append(ids)
    messages.append(ChatMessage("user", "and now?"))
    started = time.perf_counter()
    spliced = tok.render(messages, salt="many")
    elapsed = time.perf_counter() - started
    canonical = tok.render(messages, salt="nobody")
    assert tok.decode(spliced) == tok.decode(canonical)
    replies_canonical = sum(len(tok.encode(f"reply {t} ok")) for t in range(2000))
    assert len(spliced) == len(canonical) - replies_canonical + sum(map(len, generated))
    assert elapsed < 2.0, f"2,000 remembered turns rendered in {elapsed:.2f}s"


def test_a_reply_ending_in_a_split_character_is_spliced_whole(tok: ChatTokenizer) -> None:
    reply = "ok 東"
    ids = [tok.encode(ch)[0] for ch in "ok "] + tok.encode("東")
    assert len(tok.encode("東")) > 1  # its bytes are separate tokens that share one offset
    tok.remember_generation("cjk", reply, ids)
    messages = [ChatMessage("user", "hi"), ChatMessage("assistant", reply)]
    spliced = tok.render(messages, salt="cjk")
    prompt_before = tok.render([ChatMessage("user", "hi")], salt="cjk")
    assert spliced[len(prompt_before) : len(prompt_before) + len(ids)] == ids
    assert tok.decode(spliced) == tok.decode(tok.render(messages))
