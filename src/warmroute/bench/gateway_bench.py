"""`warmroute bench gateway`: what conversation-sticky routing buys, and what the gateway costs.

In one run, on 4 local engines (child processes, cores divided among them) behind two gateways
(child processes: `--policy cache-aware` and `--policy round-robin`, each with its own cache salt so
neither warms the other's cache):

1. the same multi-turn workload through each gateway (conversations sharing a system prompt,
   turns interleaved, a few in flight at once, conversation ids sent): hit rate
   (cached / prompt tokens) and TTFT p50/p99 (time to the first content token of a stream);
2. the gateway's added latency: one small non-streaming request, alternately straight to an
   engine and through the sticky gateway to that same engine, p50 and p99 of each.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from warmroute.config import ServeConfig, child_process_env, cpu_count
from warmroute.gateway.policies import preference
from warmroute.procs import (
    LocalEngine,
    free_port,
    quiet_http_client_logs,
    start_engine,
    stop_engines,
    wait_healthy,
)

WORDS = (
    "cache prefix token block engine router request stream answer model server prompt turn "
    "latency memory eviction hash chain batch decode prefill tenant salt conversation replica "
    "gateway failover health probe spill bound average load key rendezvous weight"
).split()
SYSTEM_PROMPT = (
    "You are a support assistant for a company that runs a fleet of inference servers. "
    "Answer in two or three sentences, cite the relevant setting by name, and never guess. "
) * 4


@dataclass
class Sample:
    ttft_s: float
    prompt_tokens: int
    cached_tokens: int
    reply: str


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    decisions: dict[str, int] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        prompt = sum(s.prompt_tokens for s in self.samples)
        return sum(s.cached_tokens for s in self.samples) / prompt if prompt else 0.0

    def ttft(self, q: float) -> float:
        return quantile([s.ttft_s for s in self.samples], q)


def routing_decisions(url: str) -> dict[str, int]:
    """The gateway's decision counters by reason, from its /metrics."""
    found: dict[str, int] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("warmroute_gateway_routing_decisions_total{"):
            series, value = line.rsplit(" ", 1)
            found[series.split('reason="')[1].split('"')[0]] = int(float(value))
    return found


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def user_turn(conversation: int, turn: int, words: int) -> str:
    rng = random.Random(conversation * 1000 + turn)
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"Ticket {conversation}, message {turn + 1}: {body}. What should I change?"


async def stream_turn(
    client: httpx.AsyncClient, url: str, key: str, messages: list[dict[str, str]],
    max_tokens: int,
) -> Sample:
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    ttft: float | None = None
    parts: list[str] = []
    usage: dict[str, Any] = {}
    async with client.stream("POST", url + "/v1/chat/completions", json=body,
                             headers={"x-grok-conv-id": key}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                text = choice.get("delta", {}).get("content")
                if text:
                    ttft = ttft or time.perf_counter() - started
                    parts.append(text)
    return Sample(ttft or time.perf_counter() - started, usage["prompt_tokens"],
                  usage["prompt_tokens_details"]["cached_tokens"], "".join(parts))


async def workload(url: str, args: argparse.Namespace) -> Run:
    """Every conversation's turn 1, then every turn 2, ... (each round in a shuffled order,
    or round-robin would keep each conversation on one engine by accident), `concurrency`
    requests at a time."""
    run = Run()
    histories = {c: [{"role": "system", "content": SYSTEM_PROMPT}]
                 for c in range(args.conversations)}
    gate = asyncio.Semaphore(args.concurrency)
    async with httpx.AsyncClient(timeout=300) as client:

        async def one(conversation: int, turn: int) -> None:
            history = histories[conversation]
            history.append({"role": "user",
                            "content": user_turn(conversation, turn, args.user_words)})
            async with gate:
                sample = await stream_turn(client, url, f"ticket-{conversation}", list(history),
                                           args.max_tokens)
            history.append({"role": "assistant", "content": sample.reply})
            run.samples.append(sample)

        for turn in range(args.turns):
            order = list(range(args.conversations))
            random.Random(turn).shuffle(order)  # the same arrival order for every policy
            await asyncio.gather(*(one(c, turn) for c in order))
    return run


def added_latency(
    gateway_url: str, engine: LocalEngine, key: str, salt: str, n: int
) -> tuple[list[float], list[float]]:
    """(direct, via gateway) latencies of one warm non-streaming request, interleaved."""
    body = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1,
            "temperature": 0.0}
    direct: list[float] = []
    routed: list[float] = []
    with httpx.Client(timeout=60) as client:
        for i in range(n + 10):
            for target, out in ((engine.url, direct), (gateway_url, routed)):
                payload = {**body, "cache_salt": salt} if target == engine.url else body
                started = time.perf_counter()
                response = client.post(target + "/v1/chat/completions", json=payload,
                                       headers={"x-grok-conv-id": key})
                elapsed = time.perf_counter() - started
                assert response.status_code == 200, response.text
                if i >= 10:  # the first few warm connections and caches
                    out.append(elapsed)
    return direct, routed


@contextlib.contextmanager
def gateway_process(
    engines: list[LocalEngine], policy: str, salt: str, logs: Path, epsilon: float
) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "warmroute", "gateway", "--port", str(port),
               "--policy", policy, "--cache-salt", salt, "--epsilon", str(epsilon)]
    for engine in engines:
        command += ["--engine", f"{engine.engine_id}={engine.url}"]
    with (logs / f"gateway-{policy}.log").open("wb") as log:
        popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                 env=child_process_env(1))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {policy} gateway did not start; see {logs}")
            time.sleep(0.1)
        yield url
    finally:
        popen.terminate()
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def run_gateway_bench_command(args: argparse.Namespace) -> int:
    console = Console(width=max(120, Console().width))
    quiet_http_client_logs()
    with tempfile.TemporaryDirectory(prefix="warmroute-bench-") as tmp:
        serve = ServeConfig(engines=args.engines, model=args.model, dtype=args.dtype,
                            cores=cpu_count(), data_dir=Path(tmp))
        console.print(f"starting {serve.engines} engines of {serve.model}, "
                      f"{serve.threads_per_engine} thread(s) each …")
        engines: list[LocalEngine] = []
        try:
            engines = [start_engine(serve, i) for i in range(serve.engines)]
            wait_healthy(engines, serve.startup_timeout_s)
            return measure_and_report(console, engines, args, Path(tmp))
        finally:
            stop_engines(engines)


def measure_and_report(
    console: Console, engines: list[LocalEngine], args: argparse.Namespace, logs: Path
) -> int:
    runs: dict[str, Run] = {}
    eps = args.epsilon
    with gateway_process(engines, "cache-aware", "bench-sticky", logs, eps) as sticky_url, \
            gateway_process(engines, "round-robin", "bench-round-robin", logs, eps) as rr_url:
        for name, url in (("conversation ids (sticky)", sticky_url), ("round-robin", rr_url)):
            console.print(f"workload through the {name} gateway …")
            runs[name] = asyncio.run(workload(url, args))
            runs[name].decisions = routing_decisions(url)
        console.print("added latency: direct vs through the gateway …")
        target = engines[0]
        ids = [e.engine_id for e in engines]
        key = next(f"k{i}" for i in range(10_000)
                   if preference(f"k{i}", ids)[0] == target.engine_id)
        direct, routed = added_latency(sticky_url, target, key, "bench-sticky",
                                       args.overhead_requests)

    requests = args.conversations * args.turns
    table = Table(title=f"warmroute bench gateway — {len(engines)} engines, {args.conversations} "
                        f"conversations × {args.turns} turns ({requests} streams per policy), "
                        f"{args.concurrency} in flight, ε = {eps}")
    for column in ("policy", "hit rate", "TTFT p50", "TTFT p99", "routing decisions"):
        table.add_column(column, justify="left" if column in ("policy", "routing decisions")
                         else "right")
    for name, run in runs.items():
        decisions = ", ".join(f"{k} {v}" for k, v in sorted(run.decisions.items()) if v)
        table.add_row(name, f"{run.hit_rate:.1%}", f"{run.ttft(0.5) * 1000:.1f} ms",
                      f"{run.ttft(0.99) * 1000:.1f} ms", decisions)
    console.print(table)

    latency = Table(title=f"gateway overhead — {len(direct)} warm 1-token requests per path, "
                          "interleaved")
    for column in ("path", "p50", "p99", "mean"):
        latency.add_column(column, justify="left" if column == "path" else "right")
    for name, values in (("direct to engine", direct), ("through gateway", routed)):
        latency.add_row(name, f"{quantile(values, 0.5) * 1000:.2f} ms",
                        f"{quantile(values, 0.99) * 1000:.2f} ms",
                        f"{statistics.fmean(values) * 1000:.2f} ms")
    latency.add_row("added by the gateway",
                    f"{(quantile(routed, 0.5) - quantile(direct, 0.5)) * 1000:+.2f} ms",
                    f"{(quantile(routed, 0.99) - quantile(direct, 0.99)) * 1000:+.2f} ms",
                    f"{(statistics.fmean(routed) - statistics.fmean(direct)) * 1000:+.2f} ms")
    console.print(latency)
    return 0
