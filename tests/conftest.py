"""Shared fixtures: the built-in tiny model, in-process engines and one live engine server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.procs import Proc, start_engine
from warmroute.config import EngineConfig, warmroute_home

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def home() -> Path:
    return warmroute_home()


@pytest.fixture(scope="session")
def tiny_config(home: Path) -> EngineConfig:
    """builtin:tiny in float32, where a cache hit and a miss agree to 1e-4."""
    return EngineConfig(model="builtin:tiny", dtype="float32", home=home, cache_blocks=512)


@pytest.fixture(scope="session")
def live_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """One real `warmroute engine` process on a free loopback port, shared by HTTP tests."""
    tmp = tmp_path_factory.mktemp("live-engine")
    proc = start_engine(tmp, "live-1", ["--max-running", "8"])
    try:
        proc.wait_healthy()
        yield proc
    finally:
        proc.kill()


def engine_config(base: EngineConfig, **changes: object) -> EngineConfig:
    return replace(base, **changes)  # type: ignore[arg-type]
