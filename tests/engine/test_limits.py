"""What one request may ask of the engine (issue 13): sampling ranges, 64-bit seeds, stop strings
bounded in number and length, a tiny temperature sampled greedily; and the checks reached through
`Engine.prepare`, so no such request is ever queued."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from warmroute.config import EngineConfig
from warmroute.engine.engine import Engine
from warmroute.engine.limits import (
    GREEDY_BELOW,
    MAX_SEED,
    MAX_STOP_CHARS,
    MIN_SEED,
    checked_sampling,
    shown,
)
from warmroute.errors import ContextTooLong, InvalidRequest
from warmroute.types import ChatMessage, ChatRequest, SamplingParams

REFUSED: list[tuple[str, SamplingParams, str]] = [
    ("seed 2**64", SamplingParams(seed=2**64), "seed must be an integer that fits in 64 bits"),
    ("seed below -2**63", SamplingParams(seed=MIN_SEED - 1), "seed must be an integer"),
    ("huge seed", SamplingParams(seed=10**4000), "seed must be an integer"),
    ("temperature above 2", SamplingParams(temperature=2.0001), "temperature must be a number"),
    ("negative temperature", SamplingParams(temperature=-1e-9), "temperature must be a number"),
    ("nan temperature", SamplingParams(temperature=float("nan")), "temperature must be"),
    ("infinite temperature", SamplingParams(temperature=float("inf")), "temperature must be"),
    ("top_p zero", SamplingParams(top_p=0.0), "top_p must be a number greater than 0"),
    ("top_p above one", SamplingParams(top_p=1.5), "top_p must be"),
    ("nan top_p", SamplingParams(top_p=float("nan")), "top_p must be"),
    ("five stop strings", SamplingParams(stop=("a", "b", "c", "d", "e")), "at most 4 sequences"),
    ("long stop string", SamplingParams(stop=("ok", "x" * (MAX_STOP_CHARS + 1))),
     f"stop.1: a stop sequence may have at most {MAX_STOP_CHARS} characters"),
]


@pytest.mark.parametrize(("case", "params", "message"), REFUSED, ids=[c[0] for c in REFUSED])
def test_out_of_range_sampling_is_refused(case: str, params: SamplingParams, message: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        checked_sampling(params)
    assert message in refused.value.message


@pytest.mark.parametrize("seed", [MIN_SEED, -1, 0, 2**63, MAX_SEED])
def test_any_64_bit_seed_is_accepted(seed: int) -> None:
    params = SamplingParams(seed=seed, temperature=0.7)
    assert checked_sampling(params) is params


def test_a_temperature_below_the_threshold_is_greedy() -> None:
    for tiny in (1e-40, 5e-324, GREEDY_BELOW / 2):
        assert checked_sampling(SamplingParams(temperature=tiny)).temperature == 0.0
    at_threshold = SamplingParams(temperature=GREEDY_BELOW, top_p=0.5)
    assert checked_sampling(at_threshold) is at_threshold
    boundaries = SamplingParams(temperature=2.0, top_p=1.0, stop=("s" * MAX_STOP_CHARS,) * 4)
    assert checked_sampling(boundaries) is boundaries


def test_long_numbers_are_not_echoed() -> None:
    assert shown(4096) == "4096"
    assert shown(10**4000) == "of about 4001 digits"


@pytest.fixture(scope="module")
def engine(tiny_config: EngineConfig) -> Iterator[Engine]:
    yield Engine.from_config(tiny_config)  # never started: prepare alone is under test


def ask(**sampling: object) -> ChatRequest:
    return ChatRequest((ChatMessage("user", "Hello."),), SamplingParams(**sampling))  # type: ignore[arg-type]


def test_prepare_checks_sampling_before_anything_is_queued(engine: Engine) -> None:
    with pytest.raises(InvalidRequest, match="seed must be"):
        engine.prepare(ask(seed=2**64))
    greedy = engine.prepare(ask(temperature=1e-40, max_tokens=3))
    assert greedy.request.sampling.temperature == 0.0
    assert engine.scheduler.num_waiting == 0


def test_a_huge_max_tokens_is_a_short_400(engine: Engine) -> None:
    with pytest.raises(ContextTooLong) as refused:
        engine.prepare(ask(max_tokens=10**4000))
    assert refused.value.message.startswith("max_tokens of about 4001 digits plus the prompt's")
    assert len(refused.value.message) < 200


def test_a_prompt_far_beyond_the_context_is_refused_without_tokenizing(engine: Engine) -> None:
    per_token = engine.tokenizer.max_chars_per_token
    assert per_token == 37  # builtin:tiny's longest token; it has no normalizer
    huge = ChatRequest((ChatMessage("user", "x" * (per_token * engine.context_len)),))
    least = len(engine.tokenizer.render_text(huge.messages, False)) // per_token
    assert least > engine.context_len
    with pytest.raises(ContextTooLong) as refused:
        engine.prepare(huge)
    assert refused.value.message == (
        f"the prompt has at least {least} tokens; this model's context is 4096 tokens"
    )
