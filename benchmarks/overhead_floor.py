"""What of the gateway's added latency is ours: warmroute beside the smallest Python proxies.

One instant simulated engine; in front of it, in one interleaved run (`warmroute bench
overhead`'s rounds and report): warmroute's gateway, optionally a second warmroute from another
checkout (`--baseline-src PATH`: its `src` folder, e.g. a `git worktree` of an older commit), and
three minimal reverse proxies that do nothing but relay — aiohttp's server and client; a bare
ASGI app under uvicorn (uvloop, httptools) with aiohttp's client; the same app with the
gateway's own engine client (`gateway/engine_http.LeanUpstream`), the stack warmroute runs on
(with `--granian`, the aiohttp-client app under granian, the Rust HTTP server, too; its CPU
column reads 0: granian serves from a child of the process measured).
The proxies are the floor: whatever warmroute adds above them is its own work (auth, placement,
metering, the stream's decoding). Prints figures; asserts nothing.

    .venv/bin/python benchmarks/overhead_floor.py --rounds 300 [--baseline-src /tmp/base/src]
        [--prompt-kib 38] [--engine-ids 256 --scrape-every 0.2 --no-proxies]

With `--engine-ids N` the gateways see N engines (all the one engine), and `--scrape-every S`
reads their `/metrics` meanwhile, as Prometheus does: what a large fleet's operators read
costs the requests (the exposition is written on a worker thread).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from warmroute.bench import overhead
from warmroute.bench.fleet import Launched, SimFleet, http_ok, spawn, wait_ready
from warmroute.bench.overhead import (
    RouterPath,
    add_round_arguments,
    instant_engine,
    measure,
    report,
)
from warmroute.procs import free_port

EVENT_STREAM = "text/event-stream"
PROXY_NAMES = {"aiohttp": "aiohttp server + client", "uvicorn": "uvicorn + aiohttp client",
               "lean": "uvicorn + warmroute's client", "granian": "granian + aiohttp client"}


UPSTREAM_ENV = "OVERHEAD_FLOOR_UPSTREAM"
_sessions: list[Any] = []


def client() -> Any:
    """One aiohttp session per proxy process (created inside its running loop)."""
    import aiohttp

    if not _sessions:
        _sessions.append(aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False))
    return _sessions[0]


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The smallest relay as a bare ASGI app (for uvicorn and granian alike)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        return
    upstream = os.environ[UPSTREAM_ENV]
    async with client().post(upstream + scope["path"], data=await request_body(receive),
                             headers={"content-type": "application/json"}) as answer:
        await relay(send, answer.status, answer.headers.get("content-type", ""),
                    answer.content.readany, answer.read)


_lean: list[Any] = []


async def bare_lean(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same relay with the gateway's engine client in place of aiohttp's."""
    if scope["type"] != "http" or scope["path"] == "/health":
        await bare(scope, receive, send)
        return
    from warmroute.gateway.engine_http import LeanUpstream

    if not _lean:
        _lean.append(LeanUpstream(10.0, 60.0, 10.0))
    answer = await _lean[0].post(os.environ[UPSTREAM_ENV] + scope["path"],
                                 await request_body(receive),
                                 {"content-type": "application/json"})
    await relay(send, answer.status, answer.headers.get("content-type", ""), answer.next_piece,
                answer.read)
    await answer.aclose()


async def request_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def relay(send: Any, status: int, kind_of: str, next_piece: Any, read: Any) -> None:
    """An engine's answer as it came: a stream piece by piece (`next_piece()`, empty or None
    at its end), else whole."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind_of.encode())]})
    if kind_of.startswith(EVENT_STREAM):
        while chunk := await next_piece():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.body", "body": await read()})


def serve_proxy(kind: str, port: int, upstream: str) -> None:
    """Run one minimal proxy for `upstream` on 127.0.0.1:`port` (in a child process)."""
    import uvloop

    os.environ[UPSTREAM_ENV] = upstream
    if kind == "aiohttp":
        from aiohttp import web

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            async with client().post(upstream + request.path, data=body,
                                     headers={"content-type": "application/json"}) as answer:
                if not answer.headers.get("content-type", "").startswith(EVENT_STREAM):
                    return web.Response(body=await answer.read(), status=answer.status,
                                        content_type="application/json")
                stream = web.StreamResponse(status=answer.status,
                                            headers={"content-type": EVENT_STREAM})
                await stream.prepare(request)
                async for chunk in answer.content.iter_any():
                    await stream.write(chunk)
                await stream.write_eof()
                return stream

        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        app.router.add_get("/health", health)
        web.run_app(app, host="127.0.0.1", port=port, loop=uvloop.new_event_loop(),
                    print=None, access_log=None)
    elif kind == "granian":
        from granian import Granian
        from granian.constants import Interfaces, Loops, RuntimeModes

        sys.path.insert(0, str(Path(__file__).parent))
        Granian("overhead_floor:bare", address="127.0.0.1", port=port,
                interface=Interfaces.ASGI, loop=Loops.uvloop, workers=1,
                runtime_mode=RuntimeModes.st, log_enabled=False).serve()
    else:
        import uvicorn

        uvicorn.run(bare_lean if kind == "lean" else bare, host="127.0.0.1", port=port,
                    loop="uvloop", http="httptools", log_level="warning", access_log=False)


@contextlib.contextmanager
def started(name: str, command: Callable[[int], list[str]], log: Path,
            env: dict[str, str] | None = None, key_header: str | None = None
            ) -> Iterator[RouterPath]:
    """A router process (`command` for its port), ready; stopped on exit."""
    port = free_port()
    popen = spawn(command(port), log, env)
    try:
        launched = Launched(f"http://127.0.0.1:{port}", popen, log)
        wait_ready(launched, "/health", 60, http_ok)
        yield RouterPath(name, launched.url, key_header, popen.pid)
    finally:
        popen.terminate()
        popen.wait()


def gateway_command(fleet: SimFleet, data_dir: Path, engine_ids: int = 1
                    ) -> Callable[[int], list[str]]:
    """A gateway over the fleet's one engine; with `engine_ids` > 1 it sees that many engines
    (all at the one URL, probed every 5 s), as a large fleet's gateway keeps their metrics."""
    engines = ([f"{fleet.ids[0]}={fleet.urls[0]}"] if engine_ids == 1
               else [f"e{i}={fleet.urls[0]}" for i in range(engine_ids)])
    probe = "0.5" if engine_ids == 1 else "5"
    return lambda port: [
        sys.executable, "-m", "warmroute", "gateway", "--port", str(port), "--policy",
        "cache-aware", "--probe-interval", probe, "--data-dir", str(data_dir), "--no-api-keys",
        "--public-metrics", *(arg for engine in engines for arg in ("--engine", engine))]


@contextlib.contextmanager
def scraping(paths: list[RouterPath], every_s: float | None) -> Iterator[None]:
    """A Prometheus-like reader of each gateway's `/metrics` every `every_s` seconds."""
    if every_s is None:
        yield
        return
    import threading

    import httpx

    stop = threading.Event()

    def scrape() -> None:
        with httpx.Client(timeout=30, trust_env=False) as client:
            while not stop.wait(every_s):
                for path in paths:
                    client.get(path.url + "/metrics").raise_for_status()

    thread = threading.Thread(target=scrape, name="scraper")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def proxy_command(kind: str, upstream: str) -> Callable[[int], list[str]]:
    return lambda port: [sys.executable, __file__, "--serve", kind, str(port), upstream]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_round_arguments(parser, baseline=True)
    parser.add_argument("--prompt-kib", type=float, default=None,
                        help="the prompt's size (default ~1 KiB): big prompts show per-byte work")
    parser.add_argument("--granian", action="store_true",
                        help="also the bare ASGI proxy under granian (pip install granian)")
    parser.add_argument("--engine-ids", type=int, default=1,
                        help="the gateways see this many engines (all the one engine)")
    parser.add_argument("--scrape-every", type=float, default=None, metavar="S",
                        help="read each gateway's /metrics every S seconds meanwhile")
    parser.add_argument("--no-proxies", action="store_true",
                        help="only the engine and the gateways, not the minimal proxies")
    parser.add_argument("--out", type=Path, default=Path(".warmroute/bench/overhead-floor"))
    parser.add_argument("--serve", nargs=3, metavar=("KIND", "PORT", "UPSTREAM"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, port, upstream = args.serve
        serve_proxy(kind, int(port), upstream)
        return 0
    if args.prompt_kib is not None:
        size = int(args.prompt_kib * 1024)
        overhead.PROMPT = (overhead.PROMPT * (size // len(overhead.PROMPT) + 1))[:size]
    logs = args.out / "logs"
    fleet = instant_engine(logs)
    fleet.start("overhead-floor")
    try:
        with contextlib.ExitStack() as stack:
            paths = [RouterPath("engine (direct)", fleet.urls[0], None, None)]
            paths.append(stack.enter_context(started(
                "warmroute", gateway_command(fleet, args.out / "warmroute-data", args.engine_ids),
                logs / "warmroute.log", key_header="x-grok-conv-id")))
            if args.baseline_src is not None:
                env = {**os.environ, "PYTHONPATH": str(args.baseline_src.resolve())}
                paths.append(stack.enter_context(started(
                    "warmroute (baseline)",
                    gateway_command(fleet, args.out / "baseline-data", args.engine_ids),
                    logs / "baseline.log", env, key_header="x-grok-conv-id")))
            gateways = paths[1:]
            proxies = () if args.no_proxies else (
                "aiohttp", "uvicorn", "lean", *(("granian",) if args.granian else ()))
            for kind in proxies:
                paths.append(stack.enter_context(started(
                    f"minimal proxy ({PROXY_NAMES[kind]})", proxy_command(kind, fleet.urls[0]),
                    logs / f"{kind}.log")))
            with scraping(gateways, args.scrape_every):
                measure(paths, args.rounds, args.tokens)
    finally:
        fleet.stop()
    report(paths, args.rounds, args.tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
