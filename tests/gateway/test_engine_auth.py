"""Engines called with credentials (issue 15, Must show 2), with real processes: an engine
started with `--api-key` refuses every caller without it but on `/health`, and serves a
`warmroute gateway --engine-api-key` on all three surfaces (Chat Completions through the openai
client, Responses, gRPC through the xai-sdk); an engine URL with credentials in it never shows
in any answer, header, metric or log line. (`serve` wiring its own key: test_dashboard_browser.)
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from xai_sdk import Client
from xai_sdk.chat import user

from tests.gateway.harness import MODEL, Fleet, chat_body, opening
from tests.procs import Proc, child_env, free_port, start, start_engine

pytestmark = pytest.mark.slow
ENGINE_KEY = "engine-key-0f4c8b1e9d27a6"
PASSWORD = "pass-s3cr3t-7d1e"


@pytest.fixture(scope="module")
def keyed_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_engine(tmp_path_factory.mktemp("keyed-engine"), "k1", ["--api-key", ENGINE_KEY])
    try:
        proc.wait_healthy()
        yield proc
    finally:
        proc.kill()


def admin_key(data_dir: Path) -> str:
    """`warmroute keys create --admin`, as an operator runs it; its secret from what it prints."""
    printed = subprocess.run(
        [sys.executable, "-m", "warmroute", "keys", "create", "--name", "ops", "--team", "ops",
         "--admin", "--data-dir", str(data_dir)],
        capture_output=True, text=True, check=True, env=child_env(), timeout=60,
    ).stdout
    assert "role:    admin" in printed
    found = re.search(r"secret:\s+(\S+)", printed)
    assert found is not None
    return found.group(1)


@contextlib.contextmanager
def running_gateway(tmp_path: Path, *flags: str) -> Iterator[tuple[Proc, str]]:
    """`warmroute gateway` with `flags` (keys optional), its URL and gRPC address."""
    port, grpc_port = free_port(), free_port()
    proc = start(["gateway", "--port", str(port), "--grpc-port", str(grpc_port),
                  "--data-dir", str(tmp_path / "data"), "--no-api-keys", *flags],
                 tmp_path / "gateway.log", port)
    try:
        proc.wait_healthy(timeout=60)
        yield proc, f"127.0.0.1:{grpc_port}"
    finally:
        proc.kill(signal.SIGTERM)


def test_a_keyed_engine_refuses_callers_without_its_key(keyed_engine: Proc) -> None:
    url = keyed_engine.url
    body = chat_body(opening("hi"))
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    for headers in ({}, {"authorization": "Bearer wrong-key"}, {"authorization": ENGINE_KEY}):
        refused = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert refused.status_code == 401
        assert refused.json()["code"] == "The request does not have valid authentication " \
                                          "credentials"
        assert ENGINE_KEY not in refused.text
        for path in ("/v1/models", "/cache", "/metrics"):
            assert httpx.get(url + path, headers=headers, timeout=10).status_code == 401
    good = {"authorization": f"Bearer {ENGINE_KEY}"}
    assert httpx.post(url + "/v1/chat/completions", json=body, headers=good,
                      timeout=60).status_code == 200
    assert httpx.get(url + "/cache", headers=good, timeout=10).status_code == 200


def test_the_gateway_sends_the_engine_key_on_all_three_surfaces(
    keyed_engine: Proc, tmp_path: Path,
) -> None:
    flags = ("--engine", f"k1={keyed_engine.url}", "--engine-api-key", ENGINE_KEY)
    with running_gateway(tmp_path, *flags) as (proc, grpc_host):
        surfaces_answer(proc, grpc_host)
    log = proc.log.read_text()
    assert ENGINE_KEY not in log and "ejected" not in log


def surfaces_answer(proc: Proc, grpc_host: str) -> None:
    chat = openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0)
    raw = chat.chat.completions.with_raw_response.create(
        model=MODEL, messages=opening("hello through a keyed engine"),  # type: ignore[arg-type]
        max_tokens=4, temperature=0.0)
    assert raw.headers["x-warmroute-engine"] == "k1"
    assert raw.parse().usage is not None
    responses = httpx.post(proc.url + "/v1/responses", timeout=60, json={
        "model": MODEL, "input": "hello again", "max_output_tokens": 4})
    assert responses.status_code == 200, responses.text
    assert responses.headers["x-warmroute-engine"] == "k1"
    assert responses.json()["usage"]["input_tokens"] > 0
    sdk = Client(api_key="unused", api_host=grpc_host, use_insecure_channel=True)
    conversation = sdk.chat.create(model=MODEL, max_tokens=4)
    conversation.append(user("and over gRPC"))
    assert conversation.sample().usage.prompt_tokens > 0


def test_engine_url_credentials_never_show(fleet: Fleet, tmp_path: Path) -> None:
    port = int(fleet.url("e1").rsplit(":", 1)[1])
    key = admin_key(tmp_path / "data")
    seen: list[str] = []
    engine = f"http://wr-user:{PASSWORD}@127.0.0.1:{port}"
    with running_gateway(tmp_path, "--engine", engine) as (proc, _), httpx.Client(
            base_url=proc.url, timeout=60) as client:
        for stream in (False, True):
            answer = client.post("/v1/chat/completions",
                                 json=chat_body(opening("hi"), stream=stream))
            assert answer.status_code == 200
            assert answer.headers["x-warmroute-engine"] == f"127.0.0.1:{port}"
            seen += [answer.text, str(answer.headers)]
        admin = {"authorization": f"Bearer {key}"}
        for path in ("/health", "/metrics", "/v1/admin/engines", "/v1/admin/dashboard",
                     "/v1/models", "/openapi.json"):
            shown = client.get(path, headers=admin)
            assert shown.status_code == 200, path
            seen += [shown.text, str(shown.headers)]
        engines = client.get("/v1/admin/engines", headers=admin).json()["data"]
        assert engines[0]["url"] == f"http://***@127.0.0.1:{port}"
    log = proc.log.read_text()
    assert f"***@127.0.0.1:{port}" in log  # the log names the engine, redacted
    for text in [*seen, log]:
        assert PASSWORD not in text and "wr-user" not in text
