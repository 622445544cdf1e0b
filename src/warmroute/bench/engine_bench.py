"""`warmroute bench engine`: what the prefix cache and batched decode buy on this machine.

In one run, on one in-process engine: TTFT of a cold prompt vs a prompt sharing most of its
tokens with an earlier one (same engine, cache warm), an exact repeat, and aggregate decode
tokens/s with 1 vs 4 concurrent requests. Prints a table of figures and ratios.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from rich.console import Console
from rich.table import Table

from warmroute.config import EngineConfig
from warmroute.engine.engine import Delta, Engine, Finished
from warmroute.types import ChatMessage, ChatRequest, SamplingParams

WORDS = (
    "cache prefix token block engine router request stream answer model server prompt turn "
    "latency memory eviction hash chain batch decode prefill tenant salt conversation"
).split()


def text_of_tokens(engine: Engine, n_tokens: int, seed: int) -> str:
    """Plain text that renders to about `n_tokens` tokens with this engine's tokenizer."""
    rng = random.Random(seed)
    words: list[str] = []
    while len(engine.tokenizer.encode(" ".join(words))) < n_tokens:
        words.extend(rng.choice(WORDS) for _ in range(64))
    ids = engine.tokenizer.encode(" ".join(words))[:n_tokens]
    return engine.tokenizer.decode(ids)


@dataclass(frozen=True)
class Timing:
    start: float
    first: float
    end: float
    completion_tokens: int
    cached_tokens: int

    @property
    def ttft(self) -> float:
        return self.first - self.start


SAMPLE_S = 0.005


def _nothing() -> None:
    return None


async def timed_request(
    engine: Engine,
    messages: tuple[ChatMessage, ...],
    max_tokens: int,
    on_first: Callable[[], None] = _nothing,
    on_end: Callable[[], None] = _nothing,
) -> Timing:
    """Clock readings and token counts of one greedy request (text may be empty: count events)."""
    request = ChatRequest(messages, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    start = time.perf_counter()
    first: float | None = None
    async for event in engine.generate(engine.prepare(request)):
        if first is None:
            first = time.perf_counter()
            on_first()
        if isinstance(event, Finished):
            on_end()
            usage = event.usage
            return Timing(start, first, time.perf_counter(), usage.completion_tokens,
                          usage.cached_tokens)
        assert isinstance(event, Delta)
    raise RuntimeError("no finish event")


async def measure(engine: Engine, prompt_tokens: int, shared: int, decode: int) -> dict[str, float]:
    fig: dict[str, float] = {}
    base = text_of_tokens(engine, prompt_tokens, seed=1)
    base_ids = engine.tokenizer.encode(base)
    shared_text = engine.tokenizer.decode(base_ids[:shared])
    tail = text_of_tokens(engine, prompt_tokens - shared, seed=2)
    colds, warms, repeats = [], [], []
    for round_ in range(3):
        salt_msg = ChatMessage("system", f"round {round_}")  # fresh prefix each round: a real miss
        first = (salt_msg, ChatMessage("user", base))
        second = (salt_msg, ChatMessage("user", shared_text + tail))
        colds.append((await timed_request(engine, first, 1)).ttft)
        warm = await timed_request(engine, second, 1)
        warms.append(warm.ttft)
        fig["warm_cached_tokens"] = warm.cached_tokens
        repeats.append((await timed_request(engine, first, 1)).ttft)
    fig["cold_ttft_s"] = statistics.median(colds)
    fig["warm_ttft_s"] = statistics.median(warms)
    fig["repeat_ttft_s"] = statistics.median(repeats)
    fig["warm_over_cold"] = fig["warm_ttft_s"] / fig["cold_ttft_s"]
    for concurrency in (1, 4):
        prompts = [
            (ChatMessage("user", text_of_tokens(engine, 64, seed=100 + concurrency * 10 + i)),)
            for i in range(concurrency)
        ]
        fig[f"decode_tok_s_{concurrency}"] = await decode_rate(engine, prompts, decode)
    fig["decode_speedup_4_over_1"] = fig["decode_tok_s_4"] / fig["decode_tok_s_1"]
    return fig


async def decode_rate(
    engine: Engine, prompts: Sequence[tuple[ChatMessage, ...]], decode: int
) -> float:
    """Tokens/s generated while all the requests decode together: the scheduler's own token
    count, sampled every few milliseconds, over the span where every request was running
    (prefills run one at a time, so the span starts after the last one)."""
    samples: list[tuple[float, int, int]] = []
    stats = engine.scheduler.stats

    async def sample() -> None:
        while True:
            samples.append((time.perf_counter(), stats.generated_tokens,
                            engine.scheduler.num_running))
            await asyncio.sleep(SAMPLE_S)

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.gather(*(timed_request(engine, p, decode) for p in prompts))
    finally:
        sampler.cancel()
    together = [(t, n) for t, n, running in samples if running == len(prompts)]
    if len(together) < 2 or together[-1][0] <= together[0][0]:
        raise RuntimeError("the requests never decoded together; raise --decode-tokens")
    (t0, n0), (t1, n1) = together[0], together[-1]
    return (n1 - n0) / (t1 - t0)


def run_engine_bench(
    config: EngineConfig, *, prompt_tokens: int, shared_tokens: int, decode_tokens: int
) -> int:
    console = Console()
    console.print(f"loading {config.model} ({config.dtype}) …")
    engine = Engine.from_config(replace(config, max_running=max(config.max_running, 4)))
    engine.start()
    try:
        fig = asyncio.run(measure(engine, prompt_tokens, shared_tokens, decode_tokens))
    finally:
        engine.stop()
    table = Table(title=f"warmroute bench engine — {engine.model_name}, {engine.dtype}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row(f"cold TTFT, {prompt_tokens}-token prompt", f"{fig['cold_ttft_s']:.3f} s")
    table.add_row(
        f"warm TTFT, {shared_tokens} shared ({int(fig['warm_cached_tokens'])} cached)",
        f"{fig['warm_ttft_s']:.3f} s",
    )
    table.add_row("exact repeat TTFT", f"{fig['repeat_ttft_s']:.3f} s")
    table.add_row("warm / cold (target ≤ 0.15)", f"{fig['warm_over_cold']:.3f}")
    table.add_row("decode tok/s, 1 request", f"{fig['decode_tok_s_1']:.1f}")
    table.add_row("decode tok/s, 4 concurrent", f"{fig['decode_tok_s_4']:.1f}")
    table.add_row("4 / 1 (target ≥ 3)", f"{fig['decode_speedup_4_over_1']:.2f}")
    console.print(table)
    return 0
