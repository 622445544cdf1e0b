"""What one request may ask of the engine, checked in `Engine.prepare` before it is queued.

Sampling ranges, the stop strings' number and length, and the temperature below which sampling
is greedy (as vLLM does). A request beyond any bound is refused with `InvalidRequest` (a 400),
never left to fail inside a forward pass. README's engine section lists these bounds.
"""

from __future__ import annotations

import math
from dataclasses import replace

from warmroute.errors import InvalidRequest
from warmroute.types import SamplingParams

MAX_TEMPERATURE = 2.0
GREEDY_BELOW = 1e-5  # a temperature under this samples greedily (vLLM's _SAMPLING_EPS)
MIN_SEED = -(2**63)  # a seed any 64-bit integer holds, signed or unsigned
MAX_SEED = 2**64 - 1
MAX_STOP_SEQUENCES = 4  # as OpenAI documents
MAX_STOP_CHARS = 256
SHOWN_DIGITS = 12  # numbers longer than this are not echoed back in error messages


def checked_sampling(params: SamplingParams) -> SamplingParams:
    """`params` if every field is in range (a temperature under `GREEDY_BELOW` made 0: greedy),
    else `InvalidRequest` naming the first field out of range."""
    temperature, top_p, seed = params.temperature, params.top_p, params.seed
    if not (_is_number(temperature) and 0.0 <= temperature <= MAX_TEMPERATURE):
        raise InvalidRequest(f"temperature must be a number from 0 to {MAX_TEMPERATURE:g}")
    if not (_is_number(top_p) and 0.0 < top_p <= 1.0):
        raise InvalidRequest("top_p must be a number greater than 0 and at most 1")
    if seed is not None and not (isinstance(seed, int) and MIN_SEED <= seed <= MAX_SEED):
        raise InvalidRequest("seed must be an integer that fits in 64 bits: -2**63 <= seed < 2**64")
    if params.max_tokens is not None and not isinstance(params.max_tokens, int):
        raise InvalidRequest("max_tokens must be an integer")
    check_stop(params.stop)
    if temperature < GREEDY_BELOW and temperature != 0.0:
        return replace(params, temperature=0.0)
    return params


def check_stop(stop: tuple[str, ...]) -> None:
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"stop takes at most {MAX_STOP_SEQUENCES} sequences")
    for index, text in enumerate(stop):
        if len(text) > MAX_STOP_CHARS:
            raise InvalidRequest(
                f"stop.{index}: a stop sequence may have at most {MAX_STOP_CHARS} characters"
            )


def shown(number: int) -> str:
    """`number` as an error message may echo it: short ones in full, others by their size."""
    if abs(number) < 10**SHOWN_DIGITS:
        return str(number)
    return f"of about {int(abs(number).bit_length() * math.log10(2)) + 1} digits"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
