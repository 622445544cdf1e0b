"""Caching never changes output: cold and warm runs agree in float32 (DESIGN §3).

Drives the real runner, block pool and prefix cache on builtin:tiny: the first token's logits
and 20 teacher-forced decode steps of a warm run (prefix restored from cache blocks) match a
cold run within 1e-4; batched decode matches single decode; greedy text is identical.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import torch

from warmroute.config import EngineConfig
from warmroute.engine.block_pool import BlockPool
from warmroute.engine.engine import Delta, Engine
from warmroute.engine.model import LoadedModel, load_model
from warmroute.engine.prefix_cache import PrefixCache, block_hashes, hash_seed
from warmroute.engine.runner import Runner
from warmroute.engine.sequence import Sequence
from warmroute.types import ChatMessage, ChatRequest, SamplingParams

ATOL = 1e-4
BS = 16
GREEDY = SamplingParams(max_tokens=64, temperature=0.0)


@pytest.fixture(scope="module")
def loaded(tiny_config: EngineConfig) -> LoadedModel:
    return load_model(tiny_config.model, "float32", tiny_config.home)


def conversation(n_words: int, seed: int) -> tuple[ChatMessage, ...]:
    rng = random.Random(seed)
    words = ["cache", "block", "token", "engine", "prefix", "route", "turn", "model", "hash"]
    text = " ".join(rng.choice(words) for _ in range(n_words))
    return (ChatMessage("system", "You answer briefly."), ChatMessage("user", text))


def new_seq(loaded: LoadedModel, messages: tuple[ChatMessage, ...]) -> Sequence:
    ids = loaded.tokenizer.render(messages)
    return Sequence(request_id="t", prompt_ids=ids, max_tokens=64, sampling=GREEDY)


def teacher_forced(runner: Runner, seq: Sequence, forced: list[int]) -> list[torch.Tensor]:
    steps = []
    for token in forced:
        seq.output_ids.append(token)
        steps.append(runner.decode([seq])[0])
    return steps


def cached_runner(loaded: LoadedModel) -> tuple[BlockPool, PrefixCache, Runner, bytes]:
    """A 64-block pool, its prefix cache, a runner over it, and the model's hash seed."""
    pool = BlockPool(64)
    return pool, PrefixCache(pool, BS), Runner(loaded, pool.num_blocks, BS), hash_seed(
        "builtin:tiny", "float32")


def test_warm_logits_match_cold(loaded: LoadedModel) -> None:
    pool, cache, runner, seed = cached_runner(loaded)
    messages = conversation(150, seed=1)
    forced = random.Random(7).sample(range(100, 4000), 20)

    cold = new_seq(loaded, messages)
    cold.hashes = block_hashes(cold.prompt_ids, BS, "", seed)
    assert cache.lookup(cold.hashes, cold.num_prompt_tokens) == []
    cold_first = runner.prefill(cold, [], cold.num_prompt_tokens)
    runner.write_blocks(cold, cache.insert(cold.blocks, cold.hashes))
    cold_steps = teacher_forced(runner, cold, forced)
    cache.release(cold.blocks)

    warm = new_seq(loaded, messages)
    warm.hashes = block_hashes(warm.prompt_ids, BS, "", seed)
    hits = cache.lookup(warm.hashes, warm.num_prompt_tokens)
    assert len(hits) == (warm.num_prompt_tokens - 1) // BS > 5
    warm_first = runner.prefill(warm, hits, warm.num_prompt_tokens)
    warm_steps = teacher_forced(runner, warm, forced)

    assert torch.allclose(warm_first, cold_first, atol=ATOL)
    assert int(warm_first.argmax()) == int(cold_first.argmax())
    for warm_step, cold_step in zip(warm_steps, cold_steps, strict=True):
        assert torch.allclose(warm_step, cold_step, atol=ATOL)
    cache.release(hits)
    pool.check_integrity()


def test_chunked_prefill_matches_whole(loaded: LoadedModel) -> None:
    """A prompt prefilled in chunks (after a cached prefix) ends with the same logits and
    decodes the same as one prefilled whole."""
    pool, cache, runner, seed = cached_runner(loaded)
    messages = conversation(150, seed=4)
    forced = random.Random(8).sample(range(100, 4000), 8)
    whole = new_seq(loaded, messages)
    whole.hashes = block_hashes(whole.prompt_ids, BS, "", seed)
    whole_first = runner.prefill(whole, [], whole.num_prompt_tokens)
    whole_steps = teacher_forced(runner, whole, forced)
    runner.write_blocks(whole, cache.insert(whole.blocks, whole.hashes[:3]))  # 3 blocks cached

    chunked = new_seq(loaded, messages)
    chunked.hashes = block_hashes(chunked.prompt_ids, BS, "", seed)
    hits = cache.lookup(chunked.hashes, chunked.num_prompt_tokens)
    assert len(hits) == 3
    ends = [*range(3 * BS + 37, chunked.num_prompt_tokens, 37), chunked.num_prompt_tokens]
    assert len(ends) > 3
    for end in ends:
        last = runner.prefill(chunked, hits, end)
        assert chunked.num_computed == end
    chunked_steps = teacher_forced(runner, chunked, forced)

    assert torch.allclose(last, whole_first, atol=ATOL)
    assert int(last.argmax()) == int(whole_first.argmax())
    for chunked_step, whole_step in zip(chunked_steps, whole_steps, strict=True):
        assert torch.allclose(chunked_step, whole_step, atol=ATOL)
    cache.release(whole.blocks)
    cache.release(hits)
    pool.check_integrity()


def test_batched_decode_matches_single(loaded: LoadedModel) -> None:
    runner = Runner(loaded, 8, BS)
    short, long_ = new_seq(loaded, conversation(20, 2)), new_seq(loaded, conversation(90, 3))
    singles = []
    for seq in (short, long_):
        runner.prefill(seq, [], seq.num_prompt_tokens)
        seq.output_ids.append(42)
    snapshot = [(s.kv.clone(), s.num_computed) for s in (short, long_)]
    for seq in (short, long_):
        singles.append(runner.decode([seq])[0])
    for seq, (kv, computed) in zip((short, long_), snapshot, strict=True):
        seq.kv, seq.num_computed = kv, computed
    batched = runner.decode([short, long_])
    assert torch.allclose(batched[0], singles[0], atol=ATOL)
    assert torch.allclose(batched[1], singles[1], atol=ATOL)


@pytest.fixture(scope="module")
def engine(tiny_config: EngineConfig) -> Iterator[Engine]:
    eng = Engine.from_config(tiny_config)
    eng.start()
    yield eng
    eng.stop()


async def greedy_text(engine: Engine, messages: tuple[ChatMessage, ...]) -> tuple[str, int]:
    text, cached = "", -1
    async for event in engine.generate(engine.prepare(ChatRequest(messages, GREEDY))):
        if isinstance(event, Delta):
            text += event.text
        else:
            cached = event.usage.cached_tokens
    return text, cached


async def test_greedy_text_identical_cold_and_warm(engine: Engine) -> None:
    messages = conversation(120, seed=11)
    cold_text, cold_cached = await greedy_text(engine, messages)
    warm_text, warm_cached = await greedy_text(engine, messages)
    assert cold_cached == 0
    assert warm_cached > 0
    assert warm_text == cold_text
    assert cold_text
