"""What each of the gateway's surfaces adds: Chat Completions, Responses, Messages and the xAI
gRPC API over one instant simulated engine, side by side in one run.

Every surface ends in the same engine call (a Chat Completions request), so the engine called
directly is the baseline of them all: the figures are each surface's added latency (p50 / p90 /
p99 over interleaved rounds, in shuffled order), JSON or unary and streamed, the same ~1 KiB
prompt and 16 output tokens. With `--baseline-src PATH` (another checkout's `src` folder, e.g. a
`git worktree` of an older commit) a second gateway runs that code, and every surface is measured
on both. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/surfaces_overhead.py --rounds 300 [--baseline-src /tmp/base/src]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
from xai_sdk.proto import chat_pb2, chat_pb2_grpc

from warmroute.bench.fleet import (
    Launched,
    SimFleet,
    http_ok,
    spawn,
    stop_process,
    wait_ready,
)
from warmroute.bench.overhead import PROMPT, add_round_arguments, instant_engine, quantile
from warmroute.procs import free_port

KEY = "surfaces-overhead"
Call = Callable[[], None]


@contextlib.contextmanager
def gateway(fleet: SimFleet, name: str, out: Path,
            env: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """A gateway (HTTP and gRPC) over the fleet's engine: its two addresses."""
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "warmroute", "gateway", "--port", str(port), "--grpc-port",
               str(grpc_port), "--policy", "cache-aware", "--data-dir", str(out / f"{name}-data"),
               "--no-api-keys", "--engine", f"{fleet.ids[0]}={fleet.urls[0]}"]
    log = out / "logs" / f"{name}.log"
    launched = Launched(f"http://127.0.0.1:{port}", spawn(command, log, env), log)
    try:
        wait_ready(launched, "/health", 60, http_ok)
        yield launched.url, f"127.0.0.1:{grpc_port}"
    finally:
        stop_process(launched.popen)


def http_call(client: httpx.Client, url: str, body: dict[str, Any], stream: bool) -> Call:
    headers = {"x-grok-conv-id": KEY}

    def call() -> None:
        if stream:
            with client.stream("POST", url, json=body, headers=headers) as answer:
                for _ in answer.iter_raw():
                    pass
                status = answer.status_code
        else:
            status = client.post(url, json=body, headers=headers).status_code
        if status != 200:
            raise RuntimeError(f"{url} answered HTTP {status}")

    return call


def grpc_calls(address: str, tokens: int) -> tuple[Call, Call]:
    """The gRPC API's (unary, streamed) call."""
    stub = chat_pb2_grpc.ChatStub(grpc.insecure_channel(address))
    request = chat_pb2.GetCompletionsRequest(
        model="sim", max_tokens=tokens, temperature=0,
        messages=[chat_pb2.Message(role=chat_pb2.MessageRole.ROLE_USER,
                                   content=[chat_pb2.Content(text=PROMPT)])])
    metadata = (("x-grok-conv-id", KEY),)

    def unary() -> None:
        stub.GetCompletion(request, metadata=metadata)

    def streamed() -> None:
        for _ in stub.GetCompletionChunk(request, metadata=metadata):
            pass

    return unary, streamed


def surface_calls(client: httpx.Client, url: str, grpc_address: str,
                  tokens: int) -> dict[str, tuple[Call, Call]]:
    """Each surface's (whole, streamed) call."""
    messages = [{"role": "user", "content": PROMPT}]
    chat = {"model": "sim", "max_tokens": tokens, "temperature": 0, "messages": messages}
    responses = {"model": "sim", "max_output_tokens": tokens, "temperature": 0,
                 "input": PROMPT, "store": False}
    anthropic = {"model": "sim", "max_tokens": tokens, "temperature": 0, "messages": messages}
    usage = {"stream_options": {"include_usage": True}}
    return {
        "Chat Completions": (
            http_call(client, url + "/v1/chat/completions", chat, False),
            http_call(client, url + "/v1/chat/completions", {**chat, "stream": True, **usage},
                      True)),
        "Responses": (
            http_call(client, url + "/v1/responses", responses, False),
            http_call(client, url + "/v1/responses", {**responses, "stream": True}, True)),
        "Messages": (
            http_call(client, url + "/v1/messages", anthropic, False),
            http_call(client, url + "/v1/messages", {**anthropic, "stream": True}, True)),
        "xAI gRPC": grpc_calls(grpc_address, tokens),
    }


def timed(call: Call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure(calls: dict[str, Call], rounds: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(20):
        for call in calls.values():
            call()
    for _ in range(rounds):
        names = list(calls)
        random.shuffle(names)
        for name in names:
            seconds[name].append(timed(calls[name]))
    return seconds


def report(seconds: dict[str, list[float]], gateways: list[str], rounds: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"added latency per surface — {rounds} interleaved rounds, ~1 KiB "
                        "prompt, 16 output tokens, one instant engine (ms, p50 / p90 / p99)")
    table.add_column("surface")
    for name in gateways:
        table.add_column(f"{name}: whole", justify="right")
        table.add_column(f"{name}: streamed", justify="right")
    direct = {kind: seconds[f"engine|{kind}"] for kind in ("whole", "streamed")}
    surfaces = sorted({key.split("|")[1] for key in seconds if not key.startswith("engine")})
    for surface in surfaces:
        cells = [surface]
        for name in gateways:
            for kind in ("whole", "streamed"):
                added = [a - b for a, b in zip(seconds[f"{name}|{surface}|{kind}"],
                                               direct[kind], strict=True)]
                cells.append(" / ".join(f"{quantile(added, q) * 1000:+.2f}"
                                        for q in (0.5, 0.9, 0.99)))
        table.add_row(*cells)
    Console(width=max(150, Console().width)).print(table)
    for kind, values in direct.items():
        print(f"engine direct, {kind}: p50 {quantile(values, 0.5) * 1000:.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_round_arguments(parser, baseline=True)
    parser.add_argument("--out", type=Path, default=Path(".warmroute/bench/surfaces-overhead"))
    args = parser.parse_args()
    fleet = instant_engine(args.out / "logs")
    fleet.start("surfaces")
    try:
        with contextlib.ExitStack() as stack, httpx.Client(timeout=30, trust_env=False) as client:
            engine = fleet.urls[0] + "/v1/chat/completions"
            body = {"model": "sim", "max_tokens": args.tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": PROMPT}]}
            calls = {"engine|whole": http_call(client, engine, body, False),
                     "engine|streamed": http_call(client, engine, {
                         **body, "stream": True, "stream_options": {"include_usage": True}},
                         True)}
            gateways: dict[str, dict[str, str] | None] = {"warmroute": None}
            if args.baseline_src is not None:
                gateways["baseline"] = {**os.environ,
                                        "PYTHONPATH": str(args.baseline_src.resolve())}
            for name, env in gateways.items():
                url, address = stack.enter_context(gateway(fleet, name, args.out, env))
                for surface, (whole, streamed) in surface_calls(client, url, address,
                                                                 args.tokens).items():
                    calls[f"{name}|{surface}|whole"] = whole
                    calls[f"{name}|{surface}|streamed"] = streamed
            seconds = measure(calls, args.rounds)
    finally:
        fleet.stop()
    report(seconds, list(gateways), args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
