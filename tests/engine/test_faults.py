"""Faults stay with their sequence (issue 13): the real engine on builtin:tiny, with the
scheduler's test-only fault hook raising in one request's forward pass.

The failing request gets `RequestFailed`; every other request of its batch completes with the
text it has undisturbed; the engine keeps serving, its blocks consistent. A full wait queue
refuses at once with `EngineOverloaded`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from warmroute.config import EngineConfig
from warmroute.engine.engine import Delta, Engine, Finished
from warmroute.engine.sequence import Sequence
from warmroute.errors import EngineOverloaded, RequestFailed
from warmroute.types import ChatMessage, ChatRequest, SamplingParams, Usage

POISON = "POISON"
BS = 16
PROMPTS = [f"Bystander {i} asks about caches." for i in range(3)]


def chat(text: str, max_tokens: int = 16) -> ChatRequest:
    return ChatRequest(
        (ChatMessage("user", text),), SamplingParams(max_tokens=max_tokens, temperature=0.0)
    )


async def answer(engine: Engine, text: str, max_tokens: int = 16) -> str:
    return (await answer_and_usage(engine, text, max_tokens))[0]


async def answer_and_usage(engine: Engine, text: str, max_tokens: int) -> tuple[str, Usage]:
    out = ""
    async for event in engine.generate(engine.prepare(chat(text, max_tokens))):
        if isinstance(event, Delta):
            out += event.text
        elif isinstance(event, Finished):
            return out, event.usage
    raise AssertionError("no finish event")


def poisoned(engine: Engine, seq: Sequence) -> bool:
    return POISON in engine.tokenizer.decode(seq.prompt_ids)


@pytest.fixture
async def engine(tiny_config: EngineConfig) -> AsyncIterator[Engine]:
    eng = Engine.from_config(tiny_config)
    eng.start()
    yield eng
    eng.stop()
    eng.pool.check_integrity()


@pytest.fixture
async def undisturbed(engine: Engine) -> list[str]:
    return [await answer(engine, p) for p in PROMPTS]


def record_and_raise(
    engine: Engine, phase: str, after_tokens: int = 0
) -> list[tuple[str, int, bool]]:
    """Make the poisoned request's `phase` raise (once it has `after_tokens` outputs); returns
    the passes seen: (phase, batch size, poisoned one in it)."""
    calls: list[tuple[str, int, bool]] = []

    def fault(seen: str, seqs: list[Sequence]) -> None:
        bad = [s for s in seqs if poisoned(engine, s) and len(s.output_ids) >= after_tokens]
        calls.append((seen, len(seqs), bool(bad)))
        if seen == phase and bad:
            raise RuntimeError("injected fault")

    engine.scheduler.fault = fault
    return calls


async def bystanders_and_poison(engine: Engine) -> tuple[list[str | BaseException], ...]:
    jobs = [answer(engine, p) for p in PROMPTS] + [answer(engine, f"{POISON} me", 16)]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    return results[:-1], results[-1:]


async def test_a_failing_prefill_fails_alone(engine: Engine, undisturbed: list[str]) -> None:
    calls = record_and_raise(engine, "prefill")
    others, [failed] = await bystanders_and_poison(engine)
    assert others == undisturbed
    assert isinstance(failed, RequestFailed)
    assert failed.message == (
        "the engine failed in this request's prefill: RuntimeError: injected fault"
    )
    assert ("prefill", 1, True) in calls
    engine.scheduler.fault = None
    assert await answer(engine, PROMPTS[0]) == undisturbed[0]  # the engine goes on
    stats = engine.stats()
    assert (stats["requests_failed"], stats["running"], stats["blocks_used"]) == (1, 0, 0)


async def test_a_failing_decode_fails_only_its_culprit(
    engine: Engine, undisturbed: list[str]
) -> None:
    calls = record_and_raise(engine, "decode", after_tokens=3)
    others, [failed] = await bystanders_and_poison(engine)
    assert others == undisturbed
    assert isinstance(failed, RequestFailed)
    assert "decode: RuntimeError: injected fault" in failed.message
    batched = [i for i, c in enumerate(calls) if c[0] == "decode" and c[1] > 1 and c[2]]
    assert batched, "the poisoned request must have failed inside a batch"
    first = batched[-1]  # the batch that raised, then each of its sequences alone
    retried = calls[first + 1 : first + 1 + calls[first][1]]
    assert [c[1] for c in retried] == [1] * calls[first][1]
    assert sum(c[2] for c in retried) == 1
    assert engine.stats()["requests_failed"] == 1


async def test_a_failed_block_write_is_withdrawn_from_the_cache(engine: Engine) -> None:
    runner = engine.scheduler.runner
    write = runner.write_blocks
    failures = []

    def failing_write(seq: Sequence, to_write: list) -> None:  # type: ignore[type-arg]
        if to_write and not failures:
            failures.append(len(to_write))
            raise RuntimeError("injected write fault")
        write(seq, to_write)

    runner.write_blocks = failing_write  # type: ignore[method-assign]
    text = " ".join(["prefix cache block"] * 30)
    first, usage = await answer_and_usage(engine, text, max_tokens=4)
    prompt_blocks = usage.prompt_tokens // BS
    assert failures == [prompt_blocks]  # the prompt's blocks, published after the first token
    reply_blocks = (usage.prompt_tokens + usage.completion_tokens - 1) // BS - prompt_blocks
    assert engine.pool.num_cached_blocks == reply_blocks  # the prompt's were withdrawn
    engine.pool.check_integrity()
    runner.write_blocks = write  # type: ignore[method-assign]
    again, usage = await answer_and_usage(engine, text, max_tokens=4)
    assert (again, usage.cached_tokens) == (first, 0)  # nothing stale was hit
    _, usage = await answer_and_usage(engine, text, max_tokens=4)
    assert usage.cached_tokens == (usage.prompt_tokens - 1) // BS * BS


async def test_a_full_wait_queue_refuses_at_once(tiny_config: EngineConfig) -> None:
    engine = Engine.from_config(replace(tiny_config, max_running=1, max_waiting=2))
    inside, release = threading.Event(), threading.Event()
    engine.scheduler.fault = hold_first_prefill(inside, release)
    engine.start()
    try:
        jobs = [asyncio.ensure_future(answer(engine, PROMPTS[0], 4))]
        await wait_until(inside.is_set)  # running, its prefill held: the rest must wait
        jobs += [asyncio.ensure_future(answer(engine, p, 4)) for p in PROMPTS[1:]]
        await wait_until(lambda: engine.scheduler.num_waiting == 2)
        with pytest.raises(EngineOverloaded) as refused:
            engine.prepare(chat("one too many"))
        assert refused.value.retry_after == 1.0
        assert refused.value.message == (
            "this engine already has 2 requests waiting; retry shortly"
        )
        release.set()
        assert all(await asyncio.gather(*jobs))
        assert await answer(engine, "room again", 4)
    finally:
        release.set()
        engine.stop()
    engine.pool.check_integrity()


async def test_requests_that_leave_while_waiting_free_their_places(
        tiny_config: EngineConfig) -> None:
    engine = Engine.from_config(replace(tiny_config, max_running=1, max_waiting=2))
    inside, release = threading.Event(), threading.Event()
    engine.scheduler.fault = hold_first_prefill(inside, release)
    engine.start()
    try:
        first = asyncio.ensure_future(answer(engine, PROMPTS[0], 4))
        await wait_until(inside.is_set)  # running, its prefill held: the rest must wait
        leaving = [asyncio.ensure_future(answer(engine, p, 4)) for p in PROMPTS[1:3]]
        await wait_until(lambda: engine.scheduler.num_waiting == 2)
        for job in leaving:
            job.cancel()
        await asyncio.gather(*leaving, return_exceptions=True)
        assert engine.scheduler.num_waiting == 0  # while the first is still held
        staying = asyncio.ensure_future(answer(engine, "room again", 4))
        await wait_until(lambda: engine.scheduler.num_waiting == 1)
        release.set()
        assert await first and await staying
    finally:
        release.set()
        engine.stop()
    engine.pool.check_integrity()


def hold_first_prefill(
    inside: threading.Event, release: threading.Event
) -> Callable[[str, list[Sequence]], None]:
    def fault(phase: str, seqs: list[Sequence]) -> None:
        if phase == "prefill" and not inside.is_set():
            inside.set()
            release.wait(timeout=30)

    return fault


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)
