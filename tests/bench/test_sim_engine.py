"""The simulated engine (`--model sim`): tokenizer, latency model, cache reuse, and no torch."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import replace

import pytest

from warmroute.config import EngineConfig
from warmroute.engine.block_pool import Block
from warmroute.engine.engine import Delta, Engine, Finished
from warmroute.engine.sequence import Sequence
from warmroute.engine.sim_profile import CPU, GPU, sim_profile
from warmroute.engine.sim_runner import SimRunner
from warmroute.engine.sim_tokenizer import IM_END, IM_START, SimTokenizer
from warmroute.types import ChatMessage, ChatRequest, SamplingParams, Usage

FAST = sim_profile("cpu", prefill_ms_per_token=0.0, decode_ms_per_step=0.0)


def test_tokenizer_is_deterministic_and_word_level() -> None:
    a, b = SimTokenizer(), SimTokenizer()
    text = "the quick brown fox jumps over the lazy dog"
    assert a.encode(text) == b.encode(text)
    assert len(a.encode(text)) == 9
    assert a.encode("the")[0] == a.encode(text)[6]  # same word, same id
    assert a.encode("t12345 t7") == [12345, 7]
    assert a.encode(a.decode([12345, 7, IM_END, 99])) == [12345, 7, 99]


def test_render_is_chatml_like_and_prefix_stable() -> None:
    tok = SimTokenizer()
    first = [ChatMessage("system", "be brief"), ChatMessage("user", "hello there")]
    ids = tok.render(first)
    assert ids[0] == IM_START and ids[-2] == IM_START
    assert len(ids) == 2 + 2 + 1 + 2 + 2 + 1 + 2
    longer = tok.render([*first, ChatMessage("assistant", "t5 t6"), ChatMessage("user", "more")])
    assert longer[: len(ids)] == ids  # a later turn starts with the earlier prompt
    assert tok.render(first, continue_final=True)[-1] != IM_END
    assert "<|im_start|>assistant" in tok.render_text(first, continue_final=False)


class Sleeps:
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


def test_prefill_costs_only_uncached_tokens_and_decode_is_batched() -> None:
    sleeps = Sleeps()
    runner = SimRunner(CPU, 1000, block_size=16, sleep=sleeps)
    seq = Sequence("r1", list(range(3, 203)), 4, SamplingParams())
    runner.prefill(seq, [Block(i) for i in range(10)], 200)  # 160 of 200 tokens cached
    assert sleeps.seconds[-1] == pytest.approx(40 * CPU.prefill_ms_per_token / 1000)
    assert seq.num_computed == 200
    chunked = Sequence("r2", list(range(3, 203)), 4, SamplingParams())
    runner.prefill(chunked, [Block(i) for i in range(10)], 180)  # a chunk: 20 tokens computed
    runner.prefill(chunked, [Block(i) for i in range(10)], 200)  # the next: 20 more
    assert sleeps.seconds[-2:] == [pytest.approx(20 * CPU.prefill_ms_per_token / 1000)] * 2
    assert chunked.num_computed == 200
    runner.decode([seq])
    one = sleeps.seconds[-1]
    runner.decode([replace(seq, request_id=f"r{i}") for i in range(16)])
    sixteen = sleeps.seconds[-1]
    assert one == pytest.approx(CPU.decode_ms_per_step / 1000)
    assert 1.0 < sixteen / one < 1.4  # bf16 figures: 97 ms at batch 1, 127 ms at batch 16
    assert GPU.decode_step_s(1) < CPU.decode_step_s(1)
    assert GPU.prefill_s(1000) < CPU.prefill_s(1000)


def test_sampling_is_deterministic_and_never_eos() -> None:
    runner = SimRunner(FAST, 1 << 20, block_size=16, sleep=lambda s: None)
    seqs = [Sequence(f"r{i}", [5, 6, 7, 8], 64, SamplingParams()) for i in range(2)]
    streams = []
    for seq in seqs:
        tokens = []
        for _ in range(64):
            tokens.append(runner.sample_one(None, seq))
            seq.output_ids.append(tokens[-1])
        streams.append(tokens)
    assert streams[0] == streams[1]
    assert len(set(streams[0])) > 60 and min(streams[0]) >= 3
    other = Sequence("x", [5, 6, 7, 9], 4, SamplingParams())
    assert runner.sample_one(None, other) != streams[0][0]


def sim_engine(**changes: object) -> Engine:
    config = replace(EngineConfig(model="sim", cache_blocks=256), **changes)  # type: ignore[arg-type]
    return Engine.from_config(config, FAST)


async def answer(engine: Engine, messages: list[ChatMessage], max_tokens: int
                 ) -> tuple[str, Usage, str]:
    prepared = engine.prepare(ChatRequest(tuple(messages), SamplingParams(max_tokens=max_tokens)))
    text, usage, reason = "", None, ""
    async for event in engine.generate(prepared):
        if isinstance(event, Delta):
            text += event.text
        elif isinstance(event, Finished):
            usage, reason = event.usage, event.finish_reason
    assert usage is not None
    return text, usage, reason


def test_engine_reuses_the_prefix_across_turns() -> None:
    engine = sim_engine()
    assert engine.dtype == "sim" and engine.pool.num_blocks == 256
    engine.start()
    try:
        system = ChatMessage("system", " ".join(f"w{i}" for i in range(100)))
        turn1 = [system, ChatMessage("user", "first question please")]
        reply, usage1, reason = asyncio.run(answer(engine, turn1, 12))
        assert reason == "length" and usage1.completion_tokens == 12 and usage1.cached_tokens == 0
        turn2 = [*turn1, ChatMessage("assistant", reply), ChatMessage("user", "and then?")]
        _, usage2, _ = asyncio.run(answer(engine, turn2, 4))
        # everything up to the reply's last fed token was computed and published
        assert usage2.cached_tokens == (usage1.prompt_tokens + 11) // 16 * 16
        assert usage2.cached_tokens > usage1.prompt_tokens
    finally:
        engine.stop()
    engine.pool.check_integrity()


def test_default_capacity_follows_the_profile() -> None:
    cpu = Engine.from_config(EngineConfig(model="sim"), CPU)
    gpu = Engine.from_config(EngineConfig(model="sim"), GPU)
    assert cpu.pool.num_blocks == CPU.default_cache_tokens // 16  # ~87k tokens: 1 GiB in bf16
    assert gpu.pool.num_blocks > cpu.pool.num_blocks
    assert Engine.from_config(EngineConfig(model="sim", cache_gb=0.5), CPU).pool.num_blocks == (
        2**29 // (CPU.kv_bytes_per_token * 16))


def test_profile_rejects_negative_costs() -> None:
    with pytest.raises(ValueError):
        sim_profile("cpu", prefill_ms_per_token=-1.0)


NO_TORCH = """
import asyncio, sys
from warmroute.app.cli import build_parser
from warmroute.engine.engine import Engine
from warmroute.app.engine_command import sim_profile_from_args
from warmroute.app.engine_command import engine_config
from warmroute.api.engine_app import create_engine_app
args = build_parser().parse_args(["engine", "--model", "sim", "--prefill-ms-per-token", "0",
                                  "--decode-ms-per-token", "0", "--cache-blocks", "64"])
engine = Engine.from_config(engine_config(args), sim_profile_from_args(args))
create_engine_app(engine, "e1")
engine.start()
from warmroute.types import ChatMessage, ChatRequest, SamplingParams
async def go():
    prepared = engine.prepare(ChatRequest((ChatMessage("user", "hi there"),),
                                          SamplingParams(max_tokens=3)))
    return [e async for e in engine.generate(prepared)]
events = asyncio.run(go())
engine.stop()
assert len(events) == 4, events
print("torch" in sys.modules, "transformers" in sys.modules)
"""


def test_the_sim_path_never_imports_torch() -> None:
    done = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
