"""A gRPC call that stays silent for over 100 seconds, with the real SDK's default channel
(keepalive pings every 30 s, automatic retry on UNAVAILABLE): the server accepts the pings, so
the call is neither dropped nor run twice (issue 5, item 6). A simulated engine makes the
answer slow without using the CPU."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from xai_sdk import Client
from xai_sdk.chat import user

from tests.gateway.harness import gateway_over
from tests.procs import free_port, running, start_engine
from warmroute.config import EngineEndpoint

pytestmark = pytest.mark.slow
DECODE_MS = 1000
TOKENS = 105  # about 105 s of silence on a unary call


def test_a_silent_call_over_100_seconds_is_neither_dropped_nor_repeated(tmp_path: Path) -> None:
    engine = start_engine(tmp_path, "slow", ["--model", "sim", "--decode-ms-per-token",
                                             str(DECODE_MS)])
    with running([engine]):
        port = free_port()
        with gateway_over((EngineEndpoint.of(engine.url, "slow"),), data_dir=tmp_path,
                          grpc_port=port):
            client = Client(api_key="dev", api_host=f"127.0.0.1:{port}",
                            use_insecure_channel=True, timeout=600)
            chat = client.chat.create(model="sim", max_tokens=TOKENS)
            chat.append(user("Take your time."))
            answer = chat.sample()
            stats = httpx.get(engine.url + "/cache", timeout=10).json()
    assert answer.usage.completion_tokens == TOKENS
    assert answer.finish_reason == "REASON_MAX_LEN"
    assert stats["requests_finished"] == 1  # one run: no retry re-sent it
    assert stats["prompt_tokens"] == answer.usage.prompt_tokens
