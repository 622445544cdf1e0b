"""The recent history of the gateway's metrics, for operators: every counter and histogram of the
registry read once a second (as a Prometheus scrape reads it), kept for the last minutes, and
their increase over equal steps of a window ("routing decisions by reason over the last five
minutes"). Only totals the metrics already hold; nothing of any request. No I/O; the clock is
injected, and `sample` can be driven by hand.

Running, the registry is read on a worker thread (`running_sample`): reading it costs ~4 µs a
series, and a gateway has ~7 series an engine. At 512 engines that was 20 ms on the event loop
every second, every request in flight held up meanwhile (the loop's longest gap 46 ms); on a
thread it is cut into the interpreter's switch intervals (longest gap 13 ms at CPython's 5 ms;
a gateway runs with 0.5 ms, `procs.favour_the_event_loop`). Only the encoding
stays on the loop. `steps` may run on a worker thread too (the dashboard's five minutes in
5 s steps: 73 ms at 512 engines, 9 ms at 64).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from array import array
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

Key = tuple[str, tuple[str, ...]]
"""A sample: its name (`…_total`, `…_sum`, `…_count`, `…_bucket`) and its label values."""
Totals = Mapping[Key, float]
CUMULATIVE = ("_total", "_sum", "_count", "_bucket")
DEFAULT_KEEP_S = 15 * 60.0


def counter_totals(registry: CollectorRegistry) -> dict[Key, float]:
    """Every cumulative sample of the registry now (gauges and `_created` left out)."""
    found: dict[Key, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith(CUMULATIVE):
                found[(sample.name, tuple(sample.labels.values()))] = sample.value
    return found


@dataclass(frozen=True)
class Step:
    """How much each cumulative sample grew from `start` to `end` (absent: not at all)."""

    start: float
    end: float
    increase: dict[Key, float]

    def value(self, name: str, *labels: str) -> float:
        return self.increase.get((name, labels), 0.0)

    def total(self, name: str, where: Callable[[tuple[str, ...]], bool] = lambda _: True) -> float:
        """The increase of every series named `name` whose label values pass `where`."""
        return sum(v for (n, labels), v in self.increase.items() if n == name and where(labels))


class Timeline:
    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time,
                 interval_s: float = 1.0, keep_s: float = DEFAULT_KEEP_S) -> None:
        self.registry = registry
        self.clock = clock
        self.interval_s = interval_s
        self.started_at = clock()  # every counter was 0 then
        # Each sample is an array of values in the order of `keys` (a series that appeared
        # later is absent from older, shorter arrays): 8 bytes a series a second.
        self.samples: deque[tuple[float, array[float]]] = deque(
            maxlen=int(keep_s / interval_s) + 2
        )
        self.keys: list[Key] = []
        self._index: dict[Key, int] = {}
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        self._keep(counter_totals(self.registry))

    async def running_sample(self) -> None:
        """`sample`, the registry read on a worker thread."""
        self._keep(await asyncio.to_thread(counter_totals, self.registry))

    def _keep(self, totals: Totals) -> None:
        self.samples.append((self.clock(), self._encode(totals)))

    def _encode(self, totals: Totals) -> array[float]:
        for key in totals:
            if key not in self._index:
                self._index[key] = len(self.keys)
                self.keys.append(key)
        values = array("d", bytes(8 * len(self.keys)))
        for key, value in totals.items():
            values[self._index[key]] = value
        return values

    def _decode(self, values: array[float]) -> Totals:
        return dict(zip(self.keys, values, strict=False))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="warmroute-timeline")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.running_sample()
            await asyncio.sleep(self.interval_s)

    def steps(self, window_s: float, step_s: float) -> list[Step]:
        """The last `window_s` seconds up to now in steps of `step_s`, oldest first; the last
        step ends now (the registry is read again for it)."""
        now = self.clock()
        current = counter_totals(self.registry)
        count = max(1, round(window_s / step_s))
        edges = [now - (count - k) * step_s for k in range(count + 1)]
        levels = [*self.totals_at(edges[:-1]), current]
        return [
            Step(edges[k], edges[k + 1], increase(levels[k], levels[k + 1]))
            for k in range(count)
        ]

    def totals_at(self, moments: list[float]) -> list[Totals]:
        """The totals as last sampled at or before each moment: nothing before the start, the
        oldest kept sample for a moment older than it. Safe on a worker thread while the loop
        samples: it reads a copy of the samples (`list` copies a deque in one step)."""
        samples = list(self.samples)
        times = [t for t, _ in samples]
        found: list[Totals] = []
        for moment in moments:
            if moment < self.started_at or not times:
                found.append({})
                continue
            index = bisect.bisect_right(times, moment) - 1
            found.append(self._decode(samples[max(0, index)][1]))
        return found


def increase(before: Totals, after: Totals) -> dict[Key, float]:
    grown = {key: value - before.get(key, 0.0) for key, value in after.items()}
    return {key: value for key, value in grown.items() if value > 0}
