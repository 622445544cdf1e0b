"""`warmroute bench overhead`: the latency a router adds, and the CPU it burns, side by side.

One simulated engine that answers at once (the real scheduler and prefix cache, no forward
pass); in front of it warmroute's gateway and, with `--peers`, the pinned peer routers (as
`bench fleet --peers` installs them). Every round sends the same keyed request (a ~1 KB prompt,
`--tokens` output tokens) to the engine directly and through each router, JSON then streamed,
in one interleaved order, so every router meets the same engine state and machine noise. Added
latency is paired per round (router minus direct, same round). CPU is the router process's own
user + system time over the measured rounds, per 1,000 requests (`/proc/<pid>/stat`), and
beside it the time the router was ready to run but waited for a core: the scheduler's run-queue
wait, summed over its threads (`/proc/<pid>/task/*/schedstat`; not shown where the kernel keeps
none). Where client, engine and router share a few cores, a router's CPU comes back to it as
waiting, and that waiting is part of the latency it adds. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from warmroute.bench.fleet import EngineParams, Launched, SimFleet, launch_gateway

PROMPT = ("A router sits between clients and engines; this prompt is about one kilobyte long "
          "so that parsing, hashing and relaying it cost what a real request costs. ") * 7
WARMUP_ROUNDS = 20


@dataclass
class RouterPath:
    """One way to the engine: its name, base URL, key header, process (None: the engine)."""

    name: str
    url: str
    key_header: str | None
    pid: int | None
    json_s: list[float] = field(default_factory=list)
    stream_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    wait_s: float | None = 0.0  # None: the kernel keeps no schedstat


@dataclass(frozen=True)
class ProcessTimes:
    """A process's CPU time (all its threads, those that ended too) and, where the kernel
    keeps schedstat, each live thread's run-queue wait: time ready to run without a core."""

    cpu_s: float
    waits: dict[str, float] | None = None

    def __sub__(self, earlier: ProcessTimes) -> Spent:
        wait = None
        if self.waits is not None and earlier.waits is not None:
            # A thread that began meanwhile counts from 0; one that ended took its wait along.
            wait = sum(w - earlier.waits.get(tid, 0.0) for tid, w in self.waits.items())
        return Spent(self.cpu_s - earlier.cpu_s, wait)


@dataclass(frozen=True)
class Spent:
    cpu_s: float
    wait_s: float | None


def process_times(pid: int, proc: Path = Path("/proc")) -> ProcessTimes:
    """CPU from `stat` (user + system clock ticks, dead threads included), waits from each
    thread's `schedstat` (nanoseconds); no waits where there is no schedstat."""
    fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    waits: dict[str, float] = {}
    for path in (proc / str(pid) / "task").glob("*/schedstat"):
        with contextlib.suppress(FileNotFoundError, ValueError):  # a thread that just ended
            waits[path.parent.name] = int(path.read_text().split()[1]) / 1e9
    return ProcessTimes(cpu, waits or None)


def body(tokens: int, stream: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"model": "sim", "max_tokens": tokens, "temperature": 0,
                           "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def timed(client: httpx.Client, path: RouterPath, payload: dict[str, Any]) -> float:
    headers = {path.key_header: "overhead-conversation"} if path.key_header else {}
    started = time.perf_counter()
    if payload.get("stream"):
        with client.stream("POST", path.url + "/v1/chat/completions", json=payload,
                           headers=headers) as response:
            for _ in response.iter_raw():
                pass
            status = response.status_code
    else:
        status = client.post(path.url + "/v1/chat/completions", json=payload,
                             headers=headers).status_code
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"{path.name} answered HTTP {status}")
    return elapsed


def measure(paths: list[RouterPath], rounds: int, tokens: int) -> None:
    json_body, stream_body = body(tokens, False), body(tokens, True)
    with httpx.Client(timeout=30, trust_env=False) as client:
        for _ in range(WARMUP_ROUNDS):
            for path in paths:
                timed(client, path, json_body)
                timed(client, path, stream_body)
        before = {p.name: process_times(p.pid) for p in paths if p.pid is not None}
        for _ in range(rounds):
            for path in paths:
                path.json_s.append(timed(client, path, json_body))
            for path in paths:
                path.stream_s.append(timed(client, path, stream_body))
        for path in paths:
            if path.pid is not None:
                spent = process_times(path.pid) - before[path.name]
                path.cpu_s, path.wait_s = spent.cpu_s, spent.wait_s


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def added(path: RouterPath, direct: RouterPath, stream: bool) -> list[float]:
    mine, base = (path.stream_s, direct.stream_s) if stream else (path.json_s, direct.json_s)
    return [a - b for a, b in zip(mine, base, strict=True)]


def report(paths: list[RouterPath], rounds: int, tokens: int) -> list[dict[str, Any]]:
    from rich.console import Console
    from rich.table import Table

    direct = paths[0]
    table = Table(title=f"router overhead — {rounds} interleaved rounds, "
                        f"~{len(PROMPT) / 1024:.0f} KiB prompt, {tokens} "
                        f"output tokens; engine direct p50 JSON "
                        f"{statistics.median(direct.json_s) * 1000:.2f} ms, stream "
                        f"{statistics.median(direct.stream_s) * 1000:.2f} ms")
    for column in ("router", "JSON added p50 / p90 / p99", "stream added p50 / p90 / p99",
                   "CPU s per 1,000 requests", "waiting for a core, s per 1,000"):
        table.add_column(column, justify="left" if column == "router" else "right")
    rows = []
    for path in paths[1:]:
        figures: dict[str, Any] = {
            "router": path.name, "cpu_s_per_1000": 1000 * path.cpu_s / (2 * rounds),
            "wait_s_per_1000": (None if path.wait_s is None
                                else 1000 * path.wait_s / (2 * rounds))}
        cells = [path.name]
        for kind, stream in (("json", False), ("stream", True)):
            values = added(path, direct, stream)
            qs = [quantile(values, q) * 1000 for q in (0.5, 0.9, 0.99)]
            figures[kind] = dict(zip(("p50_ms", "p90_ms", "p99_ms"), qs, strict=True))
            cells.append(" / ".join(f"{v:+.2f}" for v in qs) + " ms")
        cells.append(f"{figures['cpu_s_per_1000']:.2f}")
        wait = figures["wait_s_per_1000"]
        cells.append("—" if wait is None else f"{wait:.2f}")
        table.add_row(*cells)
        rows.append(figures)
    Console(width=max(150, Console().width)).print(table)
    return rows


@contextlib.contextmanager
def routers(fleet: SimFleet, args: argparse.Namespace, logs: Path) -> Iterator[list[RouterPath]]:
    with contextlib.ExitStack() as stack:
        gateway: Launched = stack.enter_context(
            launch_gateway(fleet, "cache-aware", logs / "warmroute.log"))
        paths = [RouterPath("engine (direct)", fleet.urls[0], None, None),
                 RouterPath("warmroute", gateway.url, "x-grok-conv-id", gateway.popen.pid)]
        if args.peers:
            from rich.console import Console

            from warmroute.bench.peers import PEERS, launch_peer, peer_venvs

            wanted = None if args.peers == "all" else {n.strip() for n in args.peers.split(",")}
            venvs = peer_venvs(args.data_dir, Console())
            for peer in PEERS:
                if wanted is not None and peer.name not in wanted:
                    continue
                log = logs / f"{peer.name.replace(' ', '-')}.log"
                launched = stack.enter_context(launch_peer(peer, venvs[peer.venv], fleet, log))
                paths.append(RouterPath(peer.name, launched.url, peer.key_header,
                                        launched.popen.pid))
        yield paths


def run_overhead_command(args: argparse.Namespace) -> int:
    import json

    from warmroute.procs import quiet_http_client_logs

    quiet_http_client_logs()
    if args.rounds < 10:
        raise SystemExit("--rounds must be at least 10")
    out = Path(args.out or Path(".warmroute") / "bench" / time.strftime("overhead-%Y%m%d-%H%M%S"))
    fleet = instant_engine(out / "logs")
    try:
        fleet.start("overhead")
        with routers(fleet, args, out / "logs") as paths:
            measure(paths, args.rounds, args.tokens)
    finally:
        fleet.stop()
    rows = report(paths, args.rounds, args.tokens)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps({"rounds": args.rounds, "tokens": args.tokens,
                                                   "routers": rows}, indent=1))
    print(f"figures: {out / 'overhead.json'}")
    return 0


def instant_engine(log_dir: Path) -> SimFleet:
    """One simulated engine that answers at once (no prefill or decode time): what is left of
    a call's latency is the network and the servers' own work."""
    return SimFleet(EngineParams(count=1, prefill_ms_per_token=0.0, decode_ms_per_token=0.0),
                    log_dir)


def add_round_arguments(parser: argparse.ArgumentParser, baseline: bool = False) -> None:
    """`--rounds` and `--tokens` (and, for the scripts in `benchmarks/`, `--baseline-src`)."""
    parser.add_argument("--rounds", type=int, default=300, help="interleaved measured rounds")
    parser.add_argument("--tokens", type=int, default=16, help="output tokens per answer")
    if baseline:
        parser.add_argument("--baseline-src", type=Path, default=None,
                            help="another checkout's src folder, run as 'baseline'")


def add_overhead_arguments(parser: argparse.ArgumentParser) -> None:
    add_round_arguments(parser)
    parser.add_argument("--peers", nargs="?", const="all", default=None, metavar="NAMES",
                        help="also the peer routers (installed under --data-dir); NAMES: only "
                             "these configurations, comma-separated")
    parser.add_argument("--data-dir", type=Path, default=Path(".warmroute"),
                        help="where the peers' virtual environments are kept")
    parser.add_argument("--out", type=Path, default=None)
