"""Results on disk and on screen: `results.json`, a side-by-side table, and PNG plots.

`results.json` holds the parameters and, per (target, scenario) run, its summary and every
request record, so `warmroute bench report results.json` redraws the table and plots later.
Plots (matplotlib, headless): hit rate over time, TTFT CDF, requests per engine.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from warmroute.bench.client import RequestRecord
from warmroute.bench.summary import COLUMNS, POOLED_COLUMNS, Pooled, Summary, pool, summarize

HIT_RATE_BINS = 20
REPEAT_SUFFIX = re.compile(r" #\d+$")  # `bench fleet --repeat` names its runs "target #k"


@dataclass
class BenchRun:
    target: str
    scenario: str
    engines: list[str]
    records: list[RequestRecord]
    duration_s: float
    fault_at_s: float | None = None
    killed: str | None = None
    summary: Summary = field(init=False)

    def __post_init__(self) -> None:
        self.summary = summarize(self.target, self.scenario, self.records, self.duration_s,
                                 self.engines)

    @property
    def label(self) -> str:
        return self.target if self.scenario == "normal" else f"{self.target} ({self.scenario})"

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target, "scenario": self.scenario, "engines": self.engines,
            "duration_s": self.duration_s, "fault_at_s": self.fault_at_s, "killed": self.killed,
            "summary": dataclasses.asdict(self.summary),
            "records": [dataclasses.asdict(r) for r in self.records],
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> BenchRun:
        return BenchRun(
            target=data["target"], scenario=data["scenario"], engines=list(data["engines"]),
            records=[RequestRecord.from_json(r) for r in data["records"]],
            duration_s=float(data["duration_s"]), fault_at_s=data.get("fault_at_s"),
            killed=data.get("killed"),
        )


def write_results(path: Path, meta: dict[str, Any], runs: Sequence[BenchRun]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "runs": [run.to_json() for run in runs]}
    path.write_text(json.dumps(document, indent=1, default=str))


def read_results(path: Path) -> tuple[dict[str, Any], list[BenchRun]]:
    document = json.loads(path.read_text())
    return dict(document.get("meta", {})), [BenchRun.from_json(r) for r in document["runs"]]


def results_table(runs: Sequence[BenchRun], title: str) -> Table:
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("target", "scenario") else "right")
    for run in runs:
        row = run.summary.row()
        table.add_row(*(row[c] for c in COLUMNS))
    return table


def pooled_runs(runs: Sequence[BenchRun]) -> list[Pooled]:
    """Each (target, scenario) that ran more than once, its repeats pooled, in report order."""
    groups: dict[tuple[str, str], list[BenchRun]] = {}
    for run in runs:
        groups.setdefault((REPEAT_SUFFIX.sub("", run.target), run.scenario), []).append(run)
    return [pool(target, scenario, [run.records for run in group])
            for (target, scenario), group in groups.items() if len(group) > 1]


def pooled_table(pooled: Sequence[Pooled]) -> Table:
    table = Table(title="repeats pooled: every request of a target's runs together")
    for column in POOLED_COLUMNS:
        table.add_column(column, justify="left" if column in ("target", "scenario") else "right")
    for figures in pooled:
        row = figures.row()
        table.add_row(*(row[c] for c in POOLED_COLUMNS))
    return table


def print_report(console: Console, runs: Sequence[BenchRun], title: str,
                 meta: Mapping[str, Any] | None = None) -> None:
    console.print(results_table(runs, title))
    pooled = pooled_runs(runs)
    if pooled:
        console.print(pooled_table(pooled))
    for run in runs:
        if run.killed:
            at = f"{run.fault_at_s:.1f} s" if run.fault_at_s is not None else "never (run ended)"
            console.print(f"  {run.label}: killed {run.killed} at {at}")
    reference = (meta or {}).get("reference")
    if isinstance(reference, Mapping):
        console.print(reference_line(reference), highlight=False, soft_wrap=True)


def reference_line(reference: Mapping[str, Any]) -> str:
    """The offline figures of a trace replay (`bench.offline`), for under the table."""
    return (f"reference (offline, same requests): ceiling {reference['ceiling']:.3f}, "
            f"load-bounded longest-prefix oracle {reference['oracle_hit_rate']:.3f} "
            f"(max/avg {reference['oracle_max_over_avg']:.2f}, "
            f"sticky {reference['oracle_sticky']:.1%}), "
            f"cache {reference['cache_blocks_512']} blocks of 512 tokens per engine")


def plot_all(runs: Sequence[BenchRun], out_dir: Path) -> list[Path]:
    """Write the three PNGs into `out_dir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in
             ("hit_rate_over_time.png", "ttft_cdf.png", "requests_per_engine.png")]

    wide = (11.0, 4.5) if len(runs) > 6 else (8.0, 4.5)
    palette = plt.get_cmap("tab20")
    colours = [palette(i / 20) for i in range(20)]
    fig, ax = plt.subplots(figsize=wide)
    for index, run in enumerate(runs):
        xs, ys = hit_rate_series(run.records, HIT_RATE_BINS)
        ax.plot(xs, ys, marker=".", label=run.label, color=colours[index % len(colours)],
                linestyle="--" if run.scenario == "fault" else "-")
        if run.fault_at_s is not None:
            ax.axvline(run.fault_at_s, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="time since start (s)", ylabel="hit rate (cached / prompt tokens)",
           title="Prefix-cache hit rate over time", ylim=(0, 1))
    legend(ax)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=wide)
    for index, run in enumerate(runs):
        ttfts = sorted(r.ttft_s * 1000 for r in run.records if r.ok and r.ttft_s is not None)
        if ttfts:
            ax.step(ttfts, [(i + 1) / len(ttfts) for i in range(len(ttfts))], where="post",
                    label=run.label, color=colours[index % len(colours)],
                    linestyle="--" if run.scenario == "fault" else "-")
    ax.set(xlabel="TTFT (ms)", ylabel="share of requests", title="TTFT CDF", ylim=(0, 1.01))
    ax.set_xscale("log")
    legend(ax)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    engines = sorted({e for run in runs for e in run.summary.per_engine})
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + 0.7 * len(engines)),
                                    max(2.5, 1.2 + 0.4 * len(runs))))
    counts = [[run.summary.per_engine.get(e, 0) for e in engines] for run in runs]
    relative = [[c / (sum(row) / len(row)) if sum(row) else 0.0 for c in row] for row in counts]
    image = ax.imshow(relative, cmap="coolwarm", vmin=0.0, vmax=2.0, aspect="auto")
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", fontsize="x-small")
    ax.set_xticks(range(len(engines)), engines, rotation=45, ha="right", fontsize="small")
    ax.set_yticks(range(len(runs)), [run.label for run in runs], fontsize="small")
    ax.set_title("Requests per engine (colour: share of the run's average)")
    fig.colorbar(image, ax=ax, label="requests / average")
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths


def legend(ax: Any) -> None:
    """Inside the axes for a few runs, beside them for many."""
    handles = ax.get_legend_handles_labels()[0]
    if len(handles) > 6:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif handles:
        ax.legend(fontsize="small")


def hit_rate_series(
    records: Sequence[RequestRecord], bins: int
) -> tuple[list[float], list[float]]:
    """Hit rate of the successful requests sent in each of `bins` equal time slices."""
    ok = [r for r in records if r.ok]
    if not ok:
        return [], []
    end = max(r.sent_s for r in ok) or 1.0
    prompt = [0] * bins
    cached = [0] * bins
    for r in ok:
        index = min(bins - 1, int(r.sent_s / end * bins))
        prompt[index] += r.prompt_tokens
        cached[index] += r.cached_tokens
    xs = [(i + 0.5) * end / bins for i in range(bins) if prompt[i]]
    ys = [cached[i] / prompt[i] for i in range(bins) if prompt[i]]
    return xs, ys
