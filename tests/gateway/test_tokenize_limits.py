"""Tokenizing is bounded like any request (issue 13), in-process over scripted engines that
serve `builtin:tiny`: only a model the healthy engines serve (never a built-in model or a folder
named by a caller), text up to `MAX_TOKENIZE_CHARS`, rate limited per key, on a worker thread
(health answers meanwhile); on gRPC `TokenizeText` and on REST `/v1/tokenize-text` alike."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from xai_sdk.proto import tokenize_pb2, tokenize_pb2_grpc

from tests.gateway.inprocess import bearer, in_process_gateway, make_keys
from tests.gateway.scripted import ScriptedFleet
from tests.procs import child_env, free_port
from warmroute.engine.builtin import builtin_path
from warmroute.gateway.tokenizers import MAX_TOKENIZE_CHARS

SERVED = "builtin:tiny"


def fleet() -> ScriptedFleet:
    engines = ScriptedFleet("t1")
    engines["t1"].model = SERVED
    return engines


async def tokenize(stub: Any, model: str, text: str,
                   metadata: tuple[tuple[str, str], ...] = ()) -> tuple[grpc.StatusCode, Any]:
    try:
        reply = await stub.TokenizeText(tokenize_pb2.TokenizeTextRequest(text=text, model=model),
                                        metadata=metadata, timeout=60)
        return grpc.StatusCode.OK, reply
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details()


async def test_only_served_models_and_bounded_text_are_tokenized(tmp_path: Path) -> None:
    port = free_port()
    async with in_process_gateway(fleet(), tmp_path, grpc_port=port) as gw, \
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = tokenize_pb2_grpc.TokenizeStub(channel)
        served = await tokenize(stub, SERVED, "Hello world")
        named_none = await tokenize(stub, "", "Hello world")
        started = time.monotonic()
        unserved = [await tokenize(stub, model, "Hello") for model in (
            "builtin:small", str(tmp_path), "../../etc", "scripted-model\x7f")]
        refused_in = time.monotonic() - started
        too_long = await tokenize(stub, SERVED, "a" * (MAX_TOKENIZE_CHARS + 1))
        rest = await gw.http.post("/v1/tokenize-text", json={"text": "hi", "model":
                                                             "builtin:small"})
    assert served[0] == grpc.StatusCode.OK and served[1].model == SERVED
    assert b"".join(t.token_bytes for t in served[1].tokens) == b"Hello world"
    assert named_none[0] == grpc.StatusCode.OK and named_none[1].model == SERVED
    assert [code for code, _ in unserved] == [grpc.StatusCode.NOT_FOUND] * 4
    assert unserved[0][1] == "The model 'builtin:small' is not served here"
    assert refused_in < 1.0  # nothing was built or loaded for them
    assert too_long == (grpc.StatusCode.INVALID_ARGUMENT,
                        f"text may have at most {MAX_TOKENIZE_CHARS} characters to tokenize, "
                        f"got {MAX_TOKENIZE_CHARS + 1}")
    assert (rest.status_code, rest.json()["error"]) == (
        404, "The model 'builtin:small' is not served here")


async def test_tokenizing_is_rate_limited_and_leaves_the_loop_free(tmp_path: Path) -> None:
    keys = await make_keys(tmp_path, limited={"team": "team-t", "rpm": 2})
    secret = keys["limited"][0]
    port = free_port()
    async with in_process_gateway(fleet(), tmp_path, grpc_port=port) as gw, \
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = tokenize_pb2_grpc.TokenizeStub(channel)
        metadata = (("authorization", f"Bearer {secret}"),)
        # The tokenizer is loaded once per process, on first use (its load is measured in
        # a fresh process below); what is measured here is the tokenizing.
        assert (await tokenize(stub, SERVED, "warm up"))[0] == grpc.StatusCode.OK
        big = asyncio.ensure_future(tokenize(stub, SERVED, "route the cache " * 40_000))
        probes = []
        while not big.done():
            probe_started = time.monotonic()
            assert (await gw.http.get("/health")).status_code == 200
            probes.append(time.monotonic() - probe_started)
            await asyncio.sleep(0.02)
        limited = [await tokenize(stub, SERVED, "hi", metadata) for _ in range(3)]
        rest = await gw.http.post("/v1/tokenize-text", json={"text": "hi"},
                                  headers=bearer(secret))
    assert (await big)[0] == grpc.StatusCode.OK
    assert len(probes) >= 3 and max(probes) < 0.5, probes
    assert [code for code, _ in limited] == [grpc.StatusCode.OK, grpc.StatusCode.OK,
                                             grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert rest.status_code == 429 and "retry-after" in rest.headers


FIRST_LOAD = """
import asyncio, json, sys, time
from warmroute.gateway.tokenizers import local_tokenizer, tokenize_served

async def main():
    gaps, done = [], asyncio.Event()
    async def tick():
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
    ticker = asyncio.create_task(tick())
    name, pieces = await tokenize_served([sys.argv[1]], None, "Hello world", local_tokenizer)
    done.set()
    await ticker
    print(json.dumps({"text": b"".join(p.token_bytes for p in pieces).decode(),
                      "torch": "torch" in sys.modules, "max_gap_s": max(gaps)}))

asyncio.run(main())
"""


def test_a_process_first_tokenizer_load_imports_no_torch_and_leaves_the_loop_free() -> None:
    """The first tokenize call in a gateway process loads its tokenizer on a worker thread. It
    read the built-in model's folder through the module that builds the model, which imported
    torch: 4.6 s of imports holding the interpreter lock, the loop stalled up to 0.33 s at a
    time. Reading a tokenizer now imports no torch (0.6 s, the loop's longest gap ~16 ms)."""
    env = child_env()
    builtin_path(SERVED, Path(env["WARMROUTE_HOME"]))  # built here if it was not yet
    out = subprocess.run([sys.executable, "-c", FIRST_LOAD, SERVED], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["text"] == "Hello world"
    assert report["torch"] is False
    assert report["max_gap_s"] < 0.25, report
