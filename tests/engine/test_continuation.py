"""Continuing a reply from the ids it was generated as (issue 8, the engine's side).

Each delta carries the ids it was released for, so a client holding the deltas up to any point
holds the ids too; an engine given those ids (`continue_token_ids`) resumes from exactly the
prompt and detokenizer state the first generation had reached: the continuation is the text an
uninterrupted run produces (float32, temperature 0), held-back text included. From the text
alone the prompt is another one, where the model's ids are not the canonical tokenization of
their text (on an engine that did not generate them: one that did remembers their ids).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest

from warmroute.config import EngineConfig
from warmroute.engine.engine import Delta, Engine, Finished
from warmroute.engine.tokenizer import IncrementalDetokenizer
from warmroute.errors import InvalidRequest
from warmroute.types import ChatMessage, ChatRequest, SamplingParams

NON_CANONICAL = (ChatMessage("user", "Écris-moi un poème sur les caches"),)
MAX_TOKENS = 60
# Prompts tried, each with a number 0-9, for an answer whose ids are not canonical.
OPENINGS = ("Écris-moi un poème sur les caches", "a b c", "日本語のテキスト", "1 2 3 4 5")


@pytest.fixture(scope="module")
def engine(tiny_config: EngineConfig) -> Iterator[Engine]:
    eng = Engine.from_config(tiny_config)
    eng.start()
    yield eng
    eng.stop()
    eng.pool.check_integrity()


def request(
    messages: Sequence[ChatMessage], max_tokens: int, stop: tuple[str, ...] = (),
    continued: bool = False,
) -> ChatRequest:
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=stop)
    return ChatRequest(tuple(messages), sampling, continue_final_message=continued)


async def run(
    engine: Engine, chat: ChatRequest, ids: Sequence[int] | None = None
) -> tuple[list[Delta], Finished]:
    deltas: list[Delta] = []
    async for event in engine.generate(engine.prepare(chat, ids)):
        if isinstance(event, Delta):
            deltas.append(event)
        else:
            return deltas, event
    raise AssertionError("no finish event")


async def resume(
    engine: Engine, messages: Sequence[ChatMessage], delivered: list[Delta], max_tokens: int,
    stop: tuple[str, ...] = (),
) -> tuple[str, Finished]:
    """Continue after `delivered`, as the gateway does: their text and ids."""
    text = "".join(d.text for d in delivered)
    ids = [i for d in delivered for i in d.token_ids]
    chat = request([*messages, ChatMessage("assistant", text)], max_tokens - len(ids), stop,
                   continued=True)
    deltas, finished = await run(engine, chat, ids)
    return text + "".join(d.text for d in deltas), finished


async def non_canonical_answers(
    engine: Engine,
) -> AsyncIterator[tuple[tuple[ChatMessage, ...], list[Delta], Finished]]:
    """Prompts whose answers' ids are not the canonical tokenization of their text (found
    among a few: which prompts do depends on builtin:tiny's weights and tokenizer)."""
    for opening, index in itertools.product(OPENINGS, range(10)):
        messages = (ChatMessage("user", f"{opening} ({index})"),)
        deltas, finished = await run(engine, request(messages, MAX_TOKENS))
        ids = [i for d in deltas for i in d.token_ids]
        if engine.tokenizer.encode("".join(d.text for d in deltas)) != ids:
            yield messages, deltas, finished


async def test_continuing_from_the_ids_gives_the_uninterrupted_text(engine: Engine) -> None:
    """From its ids, an answer cut anywhere goes on as it would have. Its text alone gives
    another prompt (the ids are not the text's canonical tokens) on an engine that did not
    generate it (one that did remembers the ids of its own generations, per salt): whether the
    model then writes other words depends on builtin:tiny's weights, so what is checked is the
    prompt each way."""
    found = await anext(non_canonical_answers(engine), None)
    assert found is not None, "no answer tried is tokenized other than canonically"
    messages, deltas, finished = found
    whole = "".join(d.text for d in deltas)
    ids = [i for d in deltas for i in d.token_ids]
    assert engine.tokenizer.decode(ids) == whole and len(ids) == finished.usage.completion_tokens
    for cut in sorted({1, 3, 10, 30, len(deltas) - 1} & set(range(1, len(deltas)))):
        text, resumed = await resume(engine, messages, deltas[:cut], MAX_TOKENS)
        assert text == whole, cut
        delivered = sum(len(d.token_ids) for d in deltas[:cut])
        assert delivered + resumed.usage.completion_tokens == finished.usage.completion_tokens
        assert resumed.finish_reason == finished.finish_reason == "length"
        assert resumed.usage.prompt_tokens == finished.usage.prompt_tokens + delivered
    differs = []
    for cut in range(1, len(deltas) + 1):
        text = "".join(d.text for d in deltas[:cut])
        cut_ids = [i for d in deltas[:cut] for i in d.token_ids]
        chat = request([*messages, ChatMessage("assistant", text)], MAX_TOKENS, continued=True)
        from_ids = engine.prepare(chat, cut_ids)
        assert from_ids.continued_ids == tuple(cut_ids)
        canonical = engine.tokenizer.render(chat.messages, "a salt that generated nothing",
                                            continue_final=True)
        differs.append(list(from_ids.prompt_ids) != canonical)
    assert any(differs)


async def held_back_case(engine: Engine) -> tuple[tuple[ChatMessage, ...], tuple[str]]:
    """A prompt and a stop string its answer keeps starting and never completes: the answer's
    most frequent delta and "!" (which it never writes), so text is held back again and again."""
    messages = (ChatMessage("user", "Écris-moi un poème sur les caches, numéro 0"),)
    deltas, _ = await run(engine, request(messages, MAX_TOKENS))
    whole = "".join(d.text for d in deltas)
    texts = [d.text for d in deltas if d.text.strip()]
    assert texts and "!" not in whole, whole
    return messages, (max(sorted(set(texts)), key=texts.count) + "!",)


async def test_text_held_back_for_a_stop_string_is_not_lost(engine: Engine) -> None:
    messages, stop = await held_back_case(engine)
    deltas, finished = await run(engine, request(messages, MAX_TOKENS, stop))
    whole = "".join(d.text for d in deltas)
    held = [cut for cut in range(1, len(deltas))
            if engine.tokenizer.decode([i for d in deltas[:cut] for i in d.token_ids])
            != "".join(d.text for d in deltas[:cut])]
    assert held, "no delta held text back"
    for cut in held[:3] + held[-2:]:
        text, resumed = await resume(engine, messages, deltas[:cut], MAX_TOKENS, stop)
        assert text == whole, cut
        assert resumed.finish_reason == finished.finish_reason


async def ends_holding_text_back(
    engine: Engine,
) -> tuple[tuple[ChatMessage, ...], tuple[str], int, list[Delta]]:
    """A prompt, a stop string and a budget whose answer's last token is partly held back:
    the stop string is the last character of a delta followed by "!" (which the answer never
    writes), the budget the tokens up to that delta. Its answer ends with a flush of text
    whose ids were all handed out already."""
    runs = 0
    for opening, index in itertools.product(OPENINGS, range(10)):
        messages = (ChatMessage("user", f"{opening} ({index})"),)
        deltas, _ = await run(engine, request(messages, MAX_TOKENS))
        if "!" in "".join(d.text for d in deltas):
            continue
        count = 0
        for delta in deltas:
            count += len(delta.token_ids)
            if count < 10 or len(delta.text) < 2 or delta.text.endswith("\ufffd"):
                continue
            stop = (delta.text[-1] + "!",)
            held, _ = await run(engine, request(messages, count, stop))
            if held and held[-1].text and not held[-1].token_ids:
                return messages, stop, count, held
            runs += 1
            if runs >= 60:
                raise AssertionError("no answer tried ends holding text back")
    raise AssertionError("no answer tried ends holding text back")


async def test_no_budget_left_releases_only_the_held_back_text(engine: Engine) -> None:
    messages, stop, budget, deltas = await ends_holding_text_back(engine)
    whole = "".join(d.text for d in deltas)
    # Everything but the last delta (the final flush) was delivered, every id with it.
    assert sum(len(d.token_ids) for d in deltas[:-1]) == budget
    text, resumed = await resume(engine, messages, deltas[:-1], budget, stop)
    assert text == whole and resumed.finish_reason == "length"
    assert resumed.usage.completion_tokens == 0


async def test_a_stop_string_already_delivered_ends_at_once(engine: Engine) -> None:
    deltas, _ = await run(engine, request(NON_CANONICAL, MAX_TOKENS))
    ids = [i for d in deltas[:20] for i in d.token_ids]
    text = "".join(d.text for d in deltas[:20])
    stop = (text[-3:],)
    cut_at = text.find(stop[0])
    chat = request([*NON_CANONICAL, ChatMessage("assistant", text[:cut_at])], 50, stop,
                   continued=True)
    more, finished = await run(engine, chat, ids)
    assert more == [] and finished.finish_reason == "stop"
    assert finished.usage.completion_tokens == 0


def test_ids_that_do_not_spell_the_message_fall_back_to_its_text(engine: Engine) -> None:
    chat = request([*NON_CANONICAL, ChatMessage("assistant", "Bonjour")], 8, continued=True)
    canonical = engine.prepare(chat)
    mismatched = engine.prepare(chat, engine.tokenizer.encode("Au revoir"))
    assert mismatched.continued_ids == () and mismatched.prompt_ids == canonical.prompt_ids
    spelled = [engine.tokenizer.encode(c)[0] for c in "Bonjour"]
    prepared = engine.prepare(chat, spelled)
    assert prepared.continued_ids == tuple(spelled)
    assert prepared.prompt_ids[-len(spelled):] == spelled
    assert prepared.prompt_ids != canonical.prompt_ids


@pytest.mark.parametrize(
    ("continued", "ids", "max_tokens"),
    [(False, [5], 8), (True, [-1], 8), (True, [10**9], 8), (True, None, 0)],
    ids=["without continue_final_message", "negative id", "id beyond vocab", "zero budget"],
)
def test_bad_continuations_are_refused(
    engine: Engine, continued: bool, ids: list[int] | None, max_tokens: int
) -> None:
    last = ChatMessage("assistant", "x")
    chat = request([*NON_CANONICAL, last], max_tokens, continued=continued)
    with pytest.raises(InvalidRequest):
        engine.prepare(chat, ids)


def test_each_delta_hands_out_the_ids_added_since_the_last(engine: Engine) -> None:
    tok = engine.tokenizer
    ids = [tok.encode(ch)[0] for ch in "abXYcXYZd"]
    detok = IncrementalDetokenizer(tok, stop=["XYZ"])
    handed: list[int] = []
    released = ""
    for token in ids:
        delta = detok.add(token)
        if delta:
            released += delta
            handed += detok.take_ids()
        if detok.finished_by_stop:
            break
    assert released == "abXYc"
    assert handed == ids[:5]  # "XY" held back, then released with "c": their ids with it
    assert detok.ids == ids[:8]  # the stop string's own ids release no text
    seeded = IncrementalDetokenizer(tok, ["XYZ"], prefix_ids=ids[:4], released=2)
    assert seeded.flush() == "XY" and seeded.take_ids() == []
