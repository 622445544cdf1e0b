"""Frozen configuration, built once from CLI flags and `WARMROUTE_*` environment variables.

This is the only module that reads the environment; everything else receives a config object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DType = Literal["auto", "bfloat16", "float32"]


def warmroute_home() -> Path:
    """Where built-in models and other caches live (`$WARMROUTE_HOME`, else ~/.cache/warmroute)."""
    env = os.environ.get("WARMROUTE_HOME")
    return Path(env) if env else Path.home() / ".cache" / "warmroute"


def env_int(name: str) -> int | None:
    """An integer `WARMROUTE_<name>` setting, or None when unset."""
    raw = os.environ.get(f"WARMROUTE_{name}")
    return int(raw) if raw else None


@dataclass(frozen=True)
class EngineConfig:
    """Everything one inference server needs to start."""

    model: str = "builtin:tiny"
    host: str = "127.0.0.1"
    port: int = 8100
    block_size: int = 16
    cache_blocks: int | None = None
    cache_gb: float | None = None
    dtype: DType = "auto"
    max_running: int = 16
    engine_id: str = ""
    served_model_name: str | None = None
    threads: int | None = None
    home: Path = Path()

    @property
    def model_name(self) -> str:
        """The model id clients must name: `--served-model-name`, else the `--model` argument."""
        if self.served_model_name:
            return self.served_model_name
        if self.model.startswith("builtin:") or self.model == "sim":
            return self.model
        path = Path(self.model)
        return path.name if path.exists() else self.model

    @property
    def resolved_engine_id(self) -> str:
        return self.engine_id or f"engine-{self.port}"
