"""Starting and stopping real warmroute processes on 127.0.0.1 for tests."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from warmroute.config import child_process_env
from warmroute.procs import free_port, spawn

__all__ = ["Proc", "free_port", "running", "start", "start_engine"]
STARTUP_TIMEOUT_S = 90.0


@dataclass
class Proc:
    """A child process serving HTTP on `url`."""

    popen: subprocess.Popen[bytes]
    url: str
    log: Path

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT_S, path: str = "/health") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"process exited early:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return
            time.sleep(0.2)
        tail = self.log.read_text()[-3000:]
        raise TimeoutError(f"{self.url} not healthy after {timeout}s:\n{tail}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=15)
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=15)


def child_env(threads: int = 1) -> dict[str, str]:
    env = child_process_env(threads)
    env.setdefault("WARMROUTE_HOME", str(Path.home() / ".cache" / "warmroute"))
    return env


def start(args: Sequence[str], log: Path, port: int, threads: int = 1) -> Proc:
    """Run `warmroute <args>` in its own process group, logging to `log` (`warmroute.procs`)."""
    log.unlink(missing_ok=True)
    popen = spawn(args, log, env=child_env(threads), start_new_session=True)
    return Proc(popen, f"http://127.0.0.1:{port}", log)


def start_engine(
    tmp: Path, engine_id: str, extra: Sequence[str] = (), port: int | None = None
) -> Proc:
    port = port or free_port()
    args = ["engine", "--port", str(port), "--engine-id", engine_id, "--threads", "1",
            "--dtype", "float32", *extra]
    return start(args, tmp / f"{engine_id}.log", port)


@contextlib.contextmanager
def running(procs: Sequence[Proc]) -> Iterator[Sequence[Proc]]:
    """Wait until every process is healthy; kill them all on the way out."""
    try:
        for proc in procs:
            proc.wait_healthy()
        yield procs
    finally:
        for proc in procs:
            proc.kill()
