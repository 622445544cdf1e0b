"""The operators' dashboard in a real browser (issue 15, Must show 3, and Must show 2's `serve`
wiring): headless Chromium (Debian's `chromium`, driven by Playwright; `make test` installs it)
opens `/dashboard` on a running `warmroute serve`, signs in with the development key, and after
requests through the gateway on all three surfaces shows both engines with requests and a cached
share above zero. A screenshot is left in the test's temporary directory. `serve`'s engines
refuse callers without the key `serve` made for them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from xai_sdk import Client
from xai_sdk.chat import system, user

from tests.gateway.harness import MODEL, SYSTEM_PROMPT, chat_body, opening, wait_for
from tests.procs import child_env, free_port

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = "dashboard.png"


@dataclass
class Served:
    url: str
    grpc_host: str
    dev_key: str
    engine_urls: list[str]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port, grpc_port, log = free_port(), free_port(), tmp_path / "serve.log"
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            [sys.executable, "-m", "warmroute", "serve", "--engines", "2", "--port", str(port),
             "--grpc-port", str(grpc_port), "--data-dir", str(tmp_path / "data"),
             "--dtype", "float32"],
            stdout=handle, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True,
        )
    try:
        def ready() -> bool:
            assert popen.poll() is None, log.read_text()
            return "Ctrl-C stops" in log.read_text()

        wait_for(ready, 180, "warmroute serve")
        engines = re.findall(r"engine-\d: (http://127\.0\.0\.1:\d+)", log.read_text())
        dev_key = (tmp_path / "data" / "dev-key").read_text().strip()
        yield Served(f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", dev_key, engines)
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)  # anything it left behind
        popen.wait(timeout=30)


def chat_turns(s: Served, stream: bool) -> None:
    """One turn of each of four conversations (the second call of each hits its cache)."""
    auth = {"authorization": f"Bearer {s.dev_key}"}
    with httpx.Client(base_url=s.url, headers=auth, timeout=120) as client:
        for n in range(4):
            messages = [{"role": "system", "content": f"Conversation {n}. {SYSTEM_PROMPT}"},
                        {"role": "user", "content": f"conversation {n}: what is a prefix cache?"}]
            answer = client.post("/v1/chat/completions", headers={"x-grok-conv-id": f"c{n}"},
                                 json=chat_body(messages, stream=stream, max_tokens=6))
            assert answer.status_code == 200, answer.text


def responses_and_grpc(s: Served) -> None:
    """A chained Responses conversation and a two-turn gRPC one (xai-sdk)."""
    auth = {"authorization": f"Bearer {s.dev_key}"}
    with httpx.Client(base_url=s.url, headers=auth, timeout=120) as client:
        first = client.post("/v1/responses", json={"model": MODEL, "input": "hello",
                                                   "instructions": SYSTEM_PROMPT,
                                                   "max_output_tokens": 4})
        assert first.status_code == 200, first.text
        again = client.post("/v1/responses", json={"model": MODEL, "input": "and again",
                                                   "previous_response_id": first.json()["id"],
                                                   "max_output_tokens": 4})
        assert again.status_code == 200, again.text
    conversation = Client(api_key=s.dev_key, api_host=s.grpc_host, use_insecure_channel=True,
                          metadata=(("x-grok-conv-id", "grpc-1"),)).chat.create(
        model=MODEL, max_tokens=4, messages=[system(SYSTEM_PROMPT)])
    for question in ("first question over gRPC", "second question over gRPC"):
        conversation.append(user(question))
        conversation.append(conversation.sample())


def test_serve_wires_engine_keys_itself(served: Served) -> None:
    assert len(served.engine_urls) == 2
    for url in served.engine_urls:
        refused = httpx.post(url + "/v1/chat/completions", json=chat_body(opening("hi")),
                             timeout=30)
        assert refused.status_code == 401
        assert httpx.get(url + "/cache", timeout=10).status_code == 401
        assert httpx.get(url + "/health", timeout=10).status_code == 200
    through = httpx.post(served.url + "/v1/chat/completions", json=chat_body(opening("hi")),
                         headers={"authorization": f"Bearer {served.dev_key}"}, timeout=60)
    assert through.status_code == 200
    engines = httpx.get(served.url + "/v1/admin/engines", timeout=30,
                        headers={"authorization": f"Bearer {served.dev_key}"}).json()["data"]
    assert [e["healthy"] for e in engines] == [True, True]
    assert all(e["cache"] is not None for e in engines)  # /cache answered the gateway's key


def wait_in_page(page: Any, function: str, timeout_s: float = 10.0) -> None:
    """Poll `function` in the page until it is true. Not `wait_for_function`: its polling
    compiles the predicate with eval in the page, which the dashboard's CSP refuses (it passed
    only when the first check was already true); `evaluate` of a function is not eval."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(function):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting in the page for {function}")
        time.sleep(0.1)


SHOWS_TRAFFIC = """() => {
  const cards = [...document.querySelectorAll('.engine')];
  const requests = cards.map(c => Number(c.querySelector('[data-field=requests]').textContent
    .replace(/,/g, '')));
  const share = parseFloat(document.getElementById('today-cached-share').textContent);
  return cards.length === 2 && requests.every(r => r > 0) && share > 0;
}"""


def test_the_dashboard_shows_the_fleet_in_a_real_browser(served: Served, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(served.url + "/dashboard")
            page.fill("#key", "xai-wr-not-a-key-of-this-gateway")
            page.click("#open")
            wait_in_page(page, "() => document.getElementById('login-error').textContent !== ''")
            assert "Incorrect API key" in page.text_content("#login-error")
            page.screenshot(path=str(tmp_path / "login.png"))
            errors.clear()  # the refused key's 400 is logged by the browser, as it should be
            page.fill("#key", served.dev_key)
            page.click("#open")
            page.wait_for_selector("#board:not([hidden])")
            for wave in range(3):  # a few seconds apart, so the plots have a shape
                if wave < 2:
                    chat_turns(served, stream=wave == 1)
                else:
                    responses_and_grpc(served)
                page.wait_for_timeout(4000)
            wait_in_page(page, SHOWS_TRAFFIC, timeout_s=30.0)
            page.wait_for_timeout(2500)  # one more poll, so the plots hold the last requests
            page.screenshot(path=str(tmp_path / SCREENSHOT), full_page=True)
            assert page.evaluate("sessionStorage.getItem('warmroute-admin-key')") == served.dev_key
            assert page.evaluate("localStorage.length") == 0
            assert page.evaluate("document.cookie") == ""
            assert page.text_content("#status-text").startswith("serving · 2/2 engines healthy")
            assert errors == []
        except BaseException:
            with contextlib.suppress(Exception):  # what the page showed, for whoever debugs it
                page.screenshot(path=str(tmp_path / "dashboard-failed.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert (tmp_path / SCREENSHOT).stat().st_size > 10_000
