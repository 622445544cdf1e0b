"""What shared routing state costs a keyed turn whose home is already known.

One simulated engine that answers at once; two gateways over it, started the same way, one alone
and one sharing routing state through a Redis of its own; the same keyed (x-grok-conv-id)
Chat Completions request sent in interleaved rounds straight to the engine, through the plain
gateway and through the shared one. Prints the added latency over the engine (p50, p90, p99) of
each gateway, in one run. Asserts nothing.

    .venv/bin/python benchmarks/shared_state_overhead.py [--rounds 400]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from warmroute.procs import (
    LocalEngine,
    RedisServer,
    free_port,
    spawn,
    stop_all,
    wait_healthy,
)

BODY = {"model": "sim", "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "How much does a known home cost? " * 30}]}
HEADERS = {"x-grok-conv-id": "overhead-conversation"}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="warmroute-overhead-"))
    redis = RedisServer(tmp / "redis").start()
    engine_port = free_port()
    engine = LocalEngine("engine-1", engine_port, spawn(
        ["engine", "--model", "sim", "--port", str(engine_port), "--engine-id", "engine-1",
         "--prefill-ms-per-token", "0", "--decode-ms-per-token", "0"], tmp / "engine.log"),
        tmp / "engine.log")
    gateways: dict[str, LocalEngine] = {}
    try:
        wait_healthy([engine], 60)
        variants = (("gateway", []), ("gateway + shared state", ["--redis-url", redis.url]))
        for name, extra in variants:
            port = free_port()
            log = tmp / f"{len(gateways)}.log"
            gateways[name] = LocalEngine(name, port, spawn(
                ["gateway", "--port", str(port), "--engine", f"engine-1={engine.url}",
                 "--no-api-keys", "--data-dir", str(tmp / f"data-{port}"), *extra], log), log)
        wait_healthy(list(gateways.values()), 60)
        targets = {"engine": engine.url, **{n: g.url for n, g in gateways.items()}}
        times: dict[str, list[float]] = {name: [] for name in targets}
        with httpx.Client(timeout=30) as client:
            for _ in range(20):  # warm-up: connections, the home, the cache
                for url in targets.values():
                    client.post(url + "/v1/chat/completions", json=BODY, headers=HEADERS)
            for _ in range(args.rounds):
                for name, url in targets.items():
                    started = time.perf_counter()
                    response = client.post(url + "/v1/chat/completions", json=BODY,
                                           headers=HEADERS)
                    times[name].append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
        base = statistics.median(times["engine"])
        print(f"{args.rounds} interleaved rounds; engine direct p50 {base * 1000:.2f} ms")
        for name in gateways:
            added = [t - base for t in times[name]]
            print(f"{name:>24}: added p50 {quantile(added, 0.5) * 1000:.2f} ms, "
                  f"p90 {quantile(added, 0.9) * 1000:.2f} ms, "
                  f"p99 {quantile(added, 0.99) * 1000:.2f} ms")
    finally:
        stop_all([g.popen for g in gateways.values()] + [engine.popen])
        redis.kill()


if __name__ == "__main__":
    main()
