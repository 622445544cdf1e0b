"""From request records to the figures a report compares: one `Summary` per (target, scenario).

- hit rate: cached / prompt tokens over successful requests;
- TTFT p50/p90/p99 over successful requests; throughput: successful requests per second of run;
- balance: the busiest engine's requests over the average of the fleet's engines;
- sticky: the share of conversations with two or more answered turns that stayed on one engine.

`pool` puts the repeats of one (target, scenario) together (`bench fleet --repeat`): hit rate and
TTFT quantiles over every request of its runs, beside each run's own p50. The p50 of a few
hundred requests moves by several percent between runs of the same router on a small machine
(smg's from 304 to 345 ms over six runs of the conversation trace here); pooled, three runs
give one figure over three times the requests.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from warmroute.bench.client import RequestRecord

COLUMNS = (
    "target", "scenario", "requests", "failed", "hit rate", "TTFT p50", "TTFT p90", "TTFT p99",
    "throughput", "max/avg per engine", "sticky",
)


@dataclass(frozen=True)
class Figures:
    """What every summary says of a set of requests: how many, failed, hit rate, TTFT."""

    target: str
    scenario: str
    requests: int
    failed: int
    hit_rate: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float

    def cells(self) -> dict[str, str]:
        return {
            "target": self.target,
            "scenario": self.scenario,
            "requests": str(self.requests),
            "failed": str(self.failed),
            "hit rate": f"{self.hit_rate:.3f}",
            "TTFT p50": ms(self.ttft_p50_s),
            "TTFT p90": ms(self.ttft_p90_s),
            "TTFT p99": ms(self.ttft_p99_s),
        }


@dataclass(frozen=True)
class Summary(Figures):
    throughput_rps: float
    max_over_avg: float
    sticky: float
    prompt_tokens: int
    cached_tokens: int
    duration_s: float
    per_engine: dict[str, int] = field(default_factory=dict)

    def row(self) -> dict[str, str]:
        """The report's columns (`COLUMNS`), formatted."""
        return {
            **self.cells(),
            "throughput": f"{self.throughput_rps:.2f} req/s",
            "max/avg per engine": f"{self.max_over_avg:.2f}",
            "sticky": f"{self.sticky:.1%}",
        }


POOLED_COLUMNS = (
    "target", "scenario", "runs", "requests", "failed", "hit rate", "TTFT p50", "TTFT p90",
    "TTFT p99", "each run's p50",
)


@dataclass(frozen=True)
class Pooled(Figures):
    """A (target, scenario)'s repeats taken together."""

    runs: int
    run_p50s_s: tuple[float, ...]

    def row(self) -> dict[str, str]:
        """The pooled report's columns (`POOLED_COLUMNS`), formatted."""
        return {**self.cells(), "runs": str(self.runs),
                "each run's p50": " / ".join(ms(p) for p in self.run_p50s_s)}


def figures(target: str, scenario: str, records: Sequence[RequestRecord]) -> Figures:
    """Over the answered requests: cached / prompt tokens, TTFT quantiles."""
    ok = [r for r in records if r.ok]
    prompt = sum(r.prompt_tokens for r in ok)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    return Figures(
        target=target,
        scenario=scenario,
        requests=len(records),
        failed=len(records) - len(ok),
        hit_rate=sum(r.cached_tokens for r in ok) / prompt if prompt else 0.0,
        ttft_p50_s=quantile(ttfts, 0.50),
        ttft_p90_s=quantile(ttfts, 0.90),
        ttft_p99_s=quantile(ttfts, 0.99),
    )


def pool(target: str, scenario: str, runs: Sequence[Sequence[RequestRecord]]) -> Pooled:
    """Figures over every request of `runs` (the repeats of one target and scenario)."""
    together = figures(target, scenario, [r for run in runs for r in run])
    return Pooled(**dataclasses.asdict(together), runs=len(runs),
                  run_p50s_s=tuple(figures(target, scenario, run).ttft_p50_s for run in runs))


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def stickiness(records: Iterable[RequestRecord]) -> float:
    engines: dict[str, set[str]] = {}
    answered: Counter[str] = Counter()
    for r in records:
        if r.ok and r.engine:
            engines.setdefault(r.conv_id, set()).add(r.engine)
            answered[r.conv_id] += 1
    multi = [c for c, n in answered.items() if n >= 2]
    return sum(1 for c in multi if len(engines[c]) == 1) / len(multi) if multi else 1.0


def summarize(
    target: str,
    scenario: str,
    records: Sequence[RequestRecord],
    duration_s: float,
    engine_ids: Sequence[str] = (),
) -> Summary:
    ok = [r for r in records if r.ok]
    per_engine: Counter[str] = Counter({e: 0 for e in engine_ids})
    per_engine.update(r.engine for r in ok if r.engine)
    average = sum(per_engine.values()) / len(per_engine) if per_engine else 0.0
    return Summary(
        **dataclasses.asdict(figures(target, scenario, records)),
        throughput_rps=len(ok) / duration_s if duration_s > 0 else 0.0,
        max_over_avg=max(per_engine.values()) / average if average else 0.0,
        sticky=stickiness(records),
        prompt_tokens=sum(r.prompt_tokens for r in ok),
        cached_tokens=sum(r.cached_tokens for r in ok),
        duration_s=duration_s,
        per_engine=dict(sorted(per_engine.items())),
    )
