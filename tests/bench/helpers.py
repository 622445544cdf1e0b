"""Shared helpers for the bench and sim tests: the Mooncake traces in ../shared/traces."""

from __future__ import annotations

from pathlib import Path

import pytest

from warmroute.sim.traces import TRACE_FILES, default_trace_dir


def trace_file(name: str) -> Path:
    """The named trace, or a skip that says where it was looked for."""
    path = default_trace_dir() / TRACE_FILES[name]
    if not path.is_file():
        pytest.skip(f"Mooncake {name} trace not found at {path} (the shared traces dir is missing)")
    return path
