"""The chat tokenizer: rendering, generated-id splicing for multi-turn hits, and incremental
detokenization with stop strings and incomplete UTF-8."""

from __future__ import annotations

import pytest

from warmroute.config import EngineConfig
from warmroute.engine.builtin import builtin_path
from warmroute.engine.tokenizer import ChatTokenizer, IncrementalDetokenizer
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
