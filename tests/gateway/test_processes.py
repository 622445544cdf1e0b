"""Must show 8 and the `warmroute gateway` command: real processes, started and stopped here.

`warmroute serve` runs in its own session; the test finds its children through /proc, stops it
with SIGTERM, and checks that none of them is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.harness import Fleet, cached_tokens, chat_body, opening, wait_for
from tests.procs import child_env, free_port, start

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    found = children(pid)
    for child in list(found):
        found += descendants(child)
    return found


def alive(pid: int) -> bool:
    """Running, i.e. neither gone nor a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            [sys.executable, "-m", "warmroute", "serve", "--engines", "2", "--port", str(port),
             "--data-dir", str(tmp_path / "data"), "--dtype", "float32"],
            stdout=handle, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True,
        )
    try:
        yield popen, f"http://127.0.0.1:{port}", log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)  # whatever the test left: the whole session
        popen.wait(timeout=30)


def test_serve_answers_warm_and_sigterm_leaves_no_child(
    serve: tuple[subprocess.Popen[bytes], str, Path], tmp_path: Path
) -> None:
    popen, url, log = serve

    def ready() -> bool:
        assert popen.poll() is None, log.read_text()
        with contextlib.suppress(httpx.HTTPError):
            return bool(httpx.get(url + "/health", timeout=2).json()["healthy_engines"] == 2)
        return False

    wait_for(ready, 120, "warmroute serve")
    wait_for(lambda: "curl" in log.read_text(), 10, "the ready banner")
    banner = log.read_text()
    assert "x-grok-conv-id" in banner and url in banner and "gRPC" in banner
    engines = descendants(popen.pid)
    assert len(engines) >= 2
    key_file = tmp_path / "data" / "dev-key"
    dev_key = key_file.read_text().strip()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert f"Bearer {dev_key}" in banner

    with httpx.Client(timeout=60) as client:
        anonymous = client.post(url + "/v1/chat/completions", json=chat_body(opening("hi")))
        assert anonymous.status_code == 401
        headers = {"x-grok-conv-id": "serve-1", "authorization": f"Bearer {dev_key}"}
        answers = [
            client.post(url + "/v1/chat/completions", headers=headers,
                        json=chat_body(opening("hello from the serve test")))
            for _ in range(2)
        ]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].headers["x-warmroute-engine"] == answers[1].headers["x-warmroute-engine"]
    prompt = answers[1].json()["usage"]["prompt_tokens"]
    assert cached_tokens(answers[1].json()) == 16 * ((prompt - 1) // 16)  # all but the last
    assert sorted(p.name for p in (tmp_path / "data").glob("*.log")) == [
        "engine-1.log", "engine-2.log"
    ]

    popen.send_signal(signal.SIGTERM)
    assert popen.wait(timeout=30) == 0
    wait_for(lambda: not any(alive(pid) for pid in engines), 10, "every child to exit")


def test_the_gateway_command_serves_engines_from_a_toml_file(fleet: Fleet, tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    port = free_port()
    entries = "".join(f'[[engines]]\nurl = "{fleet.url(i)}"\nid = "{i}"\n\n' for i in fleet.ids)
    config.write_text(
        f'[gateway]\nport = {port}\nepsilon = 0.5\nrequire_api_keys = false\n'
        'public_metrics = true\n'
        f'data_dir = "{tmp_path / "data"}"\n\n{entries}'
    )
    gateway = start(["gateway", "--config", str(config), "--max-body-bytes", "65536"],
                    tmp_path / "gateway.log", port)
    try:
        gateway.wait_healthy(timeout=30)
        models = httpx.get(gateway.url + "/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["builtin:tiny"]
        response = httpx.post(gateway.url + "/v1/chat/completions", timeout=60,
                              json=chat_body(opening("hi")), headers={"x-grok-conv-id": "cli"})
        assert response.status_code == 200
        assert response.headers["x-warmroute-engine"] in fleet.ids
        assert "warmroute_gateway_routing_decisions_total" in httpx.get(
            gateway.url + "/metrics", timeout=10).text
    finally:
        gateway.kill(signal.SIGTERM)
