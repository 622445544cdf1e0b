"""Peer routers in front of the same simulated engines (`warmroute bench fleet --peers`).

Installed from PyPI at pinned versions into virtual environments under `<data-dir>/peers/`:
`sglang-router==0.3.2` and `vllm-router==0.1.17` share one, `smg` 1.13.x has its own (the
sglang-router wheel also installs a command named `smg`). Each peer runs on 127.0.0.1 in the
configurations issue 7 names (`reference/routing-anchors.md` §5.3), with outbound traffic
confined: HTTP(S)_PROXY at a dead loopback port, NO_PROXY for loopback, HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from warmroute.bench.fleet import (
    STARTUP_TIMEOUT_S,
    Launched,
    SimFleet,
    spawn,
    stop_process,
    wait_ready,
)
from warmroute.bench.fleet_bench import Launcher, TargetSpec
from warmroute.procs import free_port, tail

ROUTERS_VENV = ("routers", ("sglang-router==0.3.2", "vllm-router==0.1.17"))
SMG_VENV = ("smg", ("smg>=1.13,<1.14",))
INSTALL_TIMEOUT_S = 900


@dataclass(frozen=True)
class PeerConfig:
    """One peer configuration: the program, its policy flags, and the key header it reads."""

    name: str
    venv: str
    program: tuple[str, ...]
    flags: tuple[str, ...]
    key_header: str | None


PEERS = (
    PeerConfig("sglang-router manual", "routers", ("python", "-m", "sglang_router.launch_router"),
               ("--policy", "manual", "--assignment-mode", "min_group"), "x-smg-routing-key"),
    PeerConfig("sglang-router cache_aware", "routers",
               ("python", "-m", "sglang_router.launch_router"), ("--policy", "cache_aware"),
               None),
    PeerConfig("smg cache_aware+sticky", "smg", ("smg", "launch"),
               ("--policy", "cache_aware", "--sticky-sessions", "--routing-key-headers",
                "x-grok-conv-id", "--assignment-mode", "min_group",
                "--disable-tokenizer-autoload"), "x-grok-conv-id"),
    PeerConfig("smg consistent_hashing", "smg", ("smg", "launch"),
               ("--policy", "consistent_hashing", "--routing-key-headers", "x-grok-conv-id",
                "--disable-tokenizer-autoload"), "x-grok-conv-id"),
    PeerConfig("vllm-router consistent_hash", "routers", ("vllm-router",),
               ("--policy", "consistent_hash"), "x-session-id"),
    PeerConfig("vllm-router sticky_least_loaded", "routers", ("vllm-router",),
               ("--policy", "sticky_least_loaded"), "x-session-id"),
)


def confined_env() -> dict[str, str]:
    """The environment for a peer: any outbound call fails locally; loopback works."""
    dead = f"http://127.0.0.1:{free_port()}"
    env = dict(os.environ)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY",
                 "all_proxy"):
        env[name] = dead
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def ensure_venv(root: Path, name: str, requirements: tuple[str, ...], console: Console) -> Path:
    """`root/name` with `requirements` installed (once; a stamp records what was installed)."""
    venv = root / name
    stamp = venv / ".warmroute-installed"
    wanted = "\n".join(requirements)
    if stamp.is_file() and stamp.read_text() == wanted:
        return venv
    console.print(f"installing {', '.join(requirements)} into {venv} …")
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"{name}-install.log"
    with log.open("wb") as handle:
        for command in ([sys.executable, "-m", "venv", "--clear", str(venv)],
                        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                         *requirements]):
            done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT,
                                  timeout=INSTALL_TIMEOUT_S, check=False)
            if done.returncode != 0:
                raise SystemExit(f"installing {name} failed; see {log}:\n{tail(log)}")
    stamp.write_text(wanted)
    return venv


@contextlib.contextmanager
def launch_peer(peer: PeerConfig, venv: Path, fleet: SimFleet, log: Path) -> Iterator[Launched]:
    port, metrics = free_port(), free_port()
    program = [str(venv / "bin" / peer.program[0]), *peer.program[1:]]
    command = [*program, "--host", "127.0.0.1", "--port", str(port),
               "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics),
               "--worker-urls", *fleet.urls, *peer.flags]
    launched = Launched(f"http://127.0.0.1:{port}", spawn(command, log, confined_env()), log)
    try:
        wait_ready(launched, "/v1/models", STARTUP_TIMEOUT_S)
        yield launched
    finally:
        stop_process(launched.popen)


def peer_venvs(data_dir: Path, console: Console) -> dict[str, Path]:
    """The peers' virtual environments, installed if needed."""
    root = (data_dir / "peers").resolve()
    return {name: ensure_venv(root, name, reqs, console)
            for name, reqs in (ROUTERS_VENV, SMG_VENV)}


def peer_targets(data_dir: Path, console: Console) -> list[TargetSpec]:
    """Install the peers if needed and return one target per configuration."""
    venvs = peer_venvs(data_dir, console)

    def launcher(peer: PeerConfig) -> Launcher:
        def launch(fleet: SimFleet, log: Path) -> AbstractContextManager[Launched]:
            return launch_peer(peer, venvs[peer.venv], fleet, log)
        return launch

    return [TargetSpec(peer.name, peer.key_header, launcher(peer)) for peer in PEERS]
