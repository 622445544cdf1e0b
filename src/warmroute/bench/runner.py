"""Drive one target URL with a workload and record every request (`client.RequestRecord`).

Two ways to pace it: by arrival times (the default: conversations start at their workload
times, an open loop), or by concurrency (`concurrency=C`: C conversations at a time, each
started when another ends, times ignored but think times kept). The conversation id travels
the way the target understands it: in `Target.key_header` (none for keyless targets). A fault
callback can run once at a fixed time after the start (killing an engine, say), the same moment
for every target. A rich progress bar shows requests done and failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from warmroute.bench.client import RequestRecord, stream_chat
from warmroute.bench.workload import Conversation, Turn, Workload, trace_messages
from warmroute.sim.textgen import BlockText

DEFAULT_KEY_HEADER = "x-grok-conv-id"


@dataclass(frozen=True)
class Target:
    """Where to send requests, and how that router wants the conversation id."""

    name: str
    url: str
    key_header: str | None = DEFAULT_KEY_HEADER
    model: str | None = None
    # Further replicas of the same router: requests go to `url` and these in turn, as a
    # round-robin load balancer sends them.
    replicas: tuple[str, ...] = ()

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.replicas)


@dataclass(frozen=True)
class RunOptions:
    concurrency: int | None = None
    timeout_s: float = 300.0
    fault_at_s: float | None = None
    progress: bool = True


@dataclass
class RunResult:
    target: str
    records: list[RequestRecord] = field(default_factory=list)
    duration_s: float = 0.0
    fault_at_s: float | None = None


class _Driver:
    def __init__(self, target: Target, options: RunOptions, client: httpx.AsyncClient,
                 on_done: Callable[[RequestRecord], None]) -> None:
        self.target = target
        self.options = options
        self.client = client
        self.on_done = on_done
        self.blocks = BlockText()
        self.started = time.perf_counter()
        self.records: list[RequestRecord] = []
        self.turns = itertools.count()

    def now(self) -> float:
        return time.perf_counter() - self.started

    async def sleep_until(self, at_s: float) -> None:
        delay = at_s - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    async def conversation(self, conv: Conversation, paced: bool) -> None:
        if paced:
            await self.sleep_until(conv.start_s)
        history: list[dict[str, str]] = []
        if conv.system is not None:
            history.append({"role": "system", "content": conv.system})
        for index, turn in enumerate(conv.turns):
            if turn.at_s is not None and paced:
                await self.sleep_until(turn.at_s)
            elif turn.think_s > 0 and index > 0:
                await asyncio.sleep(turn.think_s)
            if turn.hash_ids:
                messages = trace_messages(turn, self.blocks)
            else:
                history.append({"role": "user", "content": turn.user})
                messages = list(history)
            reply = await self.send(conv, index, turn, messages)
            if reply is not None and not turn.hash_ids:
                history.append({"role": "assistant", "content": reply})

    async def send(self, conv: Conversation, index: int, turn: Turn,
                   messages: list[dict[str, str]]) -> str | None:
        body: dict[str, object] = {"messages": messages, "max_tokens": turn.max_tokens,
                                   "temperature": 0.0}
        if self.target.model:
            body["model"] = self.target.model
        headers = {self.target.key_header: conv.conv_id} if self.target.key_header else {}
        started = time.perf_counter()
        record = RequestRecord(conv.conv_id, index, started - self.started, 0, False)
        urls = self.target.urls
        url = urls[next(self.turns) % len(urls)]
        answer = await stream_chat(self.client, url, body, headers, record, started)
        self.records.append(record)
        self.on_done(record)
        return answer.reply if record.ok else None


async def run_workload(
    workload: Workload,
    target: Target,
    options: RunOptions = RunOptions(),
    fault: Callable[[], None] | None = None,
    console: Console | None = None,
) -> RunResult:
    """Run `workload` against `target`; `fault` is called once at `options.fault_at_s`."""
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=512)
    timeout = httpx.Timeout(options.timeout_s, connect=10.0)
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"), TimeElapsedColumn(),
        console=console, disable=not options.progress, transient=False,
    )
    task = progress.add_task(target.name, total=workload.num_requests, failed=0)
    failed = 0

    def done(record: RequestRecord) -> None:
        nonlocal failed
        failed += 0 if record.ok else 1
        progress.update(task, advance=1, failed=failed)

    result = RunResult(target.name)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        driver = _Driver(target, options, client, done)

        async def inject() -> None:
            if options.fault_at_s is None or fault is None:
                return
            await driver.sleep_until(options.fault_at_s)
            fault()
            result.fault_at_s = driver.now()

        with progress:
            fault_task = asyncio.create_task(inject())
            try:
                if options.concurrency:
                    await closed_loop(driver, workload, options.concurrency)
                else:
                    await asyncio.gather(*(driver.conversation(c, paced=True)
                                           for c in workload.conversations))
            finally:
                fault_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fault_task
        result.duration_s = driver.now()
    result.records = sorted(driver.records, key=lambda r: r.sent_s)
    return result


async def closed_loop(driver: _Driver, workload: Workload, concurrency: int) -> None:
    """`concurrency` workers, each running whole conversations in arrival order."""
    queue: asyncio.Queue[Conversation] = asyncio.Queue()
    for conv in workload.conversations:
        queue.put_nowait(conv)

    async def worker() -> None:
        while True:
            try:
                conv = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await driver.conversation(conv, paced=False)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
