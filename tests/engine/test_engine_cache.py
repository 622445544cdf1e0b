"""Prefix cache behaviour seen through the engine's reported usage (issue 2, items 3–5).

A second turn hits on the first turn's prompt and reply; a different cache salt never hits;
a small cache evicts the least recently used prefix first and stays consistent.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from warmroute.config import EngineConfig
from warmroute.engine.engine import Delta, Engine, Finished
from warmroute.types import ChatMessage, ChatRequest, SamplingParams, Usage

BS = 16


def words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    vocab = ["cache", "block", "token", "engine", "prefix", "route", "turn", "model", "hash"]
    return " ".join(rng.choice(vocab) for _ in range(n))


async def run(
    engine: Engine, messages: tuple[ChatMessage, ...], max_tokens: int = 12, salt: str = ""
) -> tuple[str, Usage]:
    request = ChatRequest(
        messages, SamplingParams(max_tokens=max_tokens, temperature=0.0), cache_salt=salt
    )
    text = ""
    async for event in engine.generate(engine.prepare(request)):
        if isinstance(event, Delta):
            text += event.text
        elif isinstance(event, Finished):
            return text, event.usage
    raise AssertionError("no finish event")


@pytest.fixture
async def engine(tiny_config: EngineConfig) -> AsyncIterator[Engine]:
    eng = Engine.from_config(tiny_config)
    eng.start()
    yield eng
    eng.stop()
    eng.pool.check_integrity()


async def test_second_turn_hits_prompt_and_reply(engine: Engine) -> None:
    turn1 = (ChatMessage("system", "You are terse. " + words(40, 1)), ChatMessage("user", "Hi?"))
    reply, usage1 = await run(engine, turn1, max_tokens=24)
    assert usage1.cached_tokens == 0
    turn2 = (*turn1, ChatMessage("assistant", reply), ChatMessage("user", "And then?"))
    _, usage2 = await run(engine, turn2)
    expected = (usage1.prompt_tokens + usage1.completion_tokens) // BS * BS - BS
    assert usage2.cached_tokens >= expected
    assert usage2.cached_tokens < usage2.prompt_tokens
    assert usage2.cached_tokens % BS == 0


async def test_different_salt_never_hits(engine: Engine) -> None:
    messages = (ChatMessage("user", words(80, 2)),)
    _, first = await run(engine, messages, salt="team-a")
    _, same_salt = await run(engine, messages, salt="team-a")
    _, other_salt = await run(engine, messages, salt="team-b")
    assert first.cached_tokens == 0
    assert same_salt.cached_tokens > 0
    assert other_salt.cached_tokens == 0


async def test_lru_eviction_with_small_capacity(tiny_config: EngineConfig) -> None:
    prompts = {name: (ChatMessage("user", f"{name} " + words(60, seed)),)
               for seed, name in enumerate(["alpha", "bravo", "charlie", "delta"])}
    probe = Engine.from_config(tiny_config)
    lengths = {name: len(probe.prepare(ChatRequest(m)).prompt_ids) for name, m in prompts.items()}
    blocks = {name: n // BS for name, n in lengths.items()}
    assert len(set(blocks.values())) == 1, "prompts must span equal block counts"
    per_prompt = blocks["alpha"]
    engine = Engine.from_config(replace(tiny_config, cache_blocks=3 * per_prompt))
    engine.start()
    try:
        for name in ("alpha", "bravo", "charlie", "alpha"):  # alpha used again: bravo is oldest
            await run(engine, prompts[name], max_tokens=1)
        assert engine.pool.num_evictions == 0
        await run(engine, prompts["delta"], max_tokens=1)  # needs room: evicts bravo only
        assert engine.pool.num_evictions == per_prompt
        hit = {name: (lengths[name] - 1) // BS * BS for name in lengths}
        for name in ("charlie", "alpha", "delta", "bravo"):  # bravo last: it evicts on insert
            _, usage = await run(engine, prompts[name], max_tokens=1)
            assert usage.cached_tokens == (0 if name == "bravo" else hit[name]), name
        engine.pool.check_integrity()
    finally:
        engine.stop()
