"""Starting, watching and stopping warmroute's own processes on 127.0.0.1: the one helper
module that `serve`, the benchmarks and the tests share.

Children run `python -m warmroute …` with the thread settings of `config.child_process_env`;
on Linux they also get SIGTERM if their parent dies without cleaning up (PR_SET_PDEATHSIG), so
none is orphaned. `server_config` is how every warmroute HTTP server runs under uvicorn (with a
bound on the time a client takes to send a request's headers); `BackgroundServer` runs an ASGI
app so on a thread of this process (tests and the in-process benchmarks use it); `RedisServer`
is a private Redis (replicas in the benchmarks and tests). Cheap to import: uvicorn only when a
server starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from warmroute.config import ServeConfig, child_process_env

STOP_GRACE_S = 10.0
HEADER_TIMEOUT_S = 10.0
SERVER_STARTUP_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1
WARMROUTE_COMMAND = (sys.executable, "-m", "warmroute")


@dataclass
class LocalEngine:
    engine_id: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when the parent exits (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(args: Sequence[str], log: Path, threads: int = 1,
          **popen: Any) -> subprocess.Popen[bytes]:
    """`warmroute <args>` as a child writing to `log`, dying with this process on Linux."""
    with log.open("ab") as handle:
        return subprocess.Popen(
            [*WARMROUTE_COMMAND, *args], stdout=handle, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=popen.pop("env", None) or child_process_env(threads),
            preexec_fn=die_with_parent if sys.platform == "linux" else None, **popen,
        )


def start_engine(config: ServeConfig, index: int, extra: Sequence[str] = (),
                 api_key: str | None = None) -> LocalEngine:
    """The `index`-th local engine of `serve`: `engine-<n>` on a free port, requiring
    `api_key` when given (passed in its environment, never on its command line), prefilling by
    the priority its gateway sends (`engine_priority`)."""
    engine_id, port = f"engine-{index + 1}", free_port()
    log = config.data_dir / f"{engine_id}.log"
    threads = config.threads_per_engine
    args = ["engine", "--host", "127.0.0.1", "--port", str(port), "--engine-id", engine_id,
            "--model", config.model, "--threads", str(threads), "--dtype", config.dtype,
            "--scheduling-policy", "priority", *extra]
    env = child_process_env(threads, api_key)
    return LocalEngine(engine_id, port, spawn(args, log, threads, env=env), log)


def wait_healthy(engines: Sequence[LocalEngine], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(engines)
    while pending:
        engine = pending[0]
        if engine.popen.poll() is not None:
            raise RuntimeError(f"{engine.engine_id} exited early; see {engine.log}:\n"
                               + tail(engine.log))
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(engine.url + "/health", timeout=1.0).status_code == 200:
                pending.pop(0)
                continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"{engine.engine_id} not healthy after {timeout:.0f}s; see "
                               f"{engine.log}")
        time.sleep(0.2)


def stop_engines(engines: Sequence[LocalEngine]) -> None:
    stop_all([e.popen for e in engines])


def stop_all(popens: Sequence[subprocess.Popen[bytes]], sig: int = signal.SIGTERM,
             grace_s: float = STOP_GRACE_S) -> None:
    """Send `sig` to every child still running, wait up to `grace_s`, then kill the rest."""
    for popen in popens:
        if popen.poll() is None:
            popen.send_signal(sig)
    deadline = time.monotonic() + grace_s
    for popen in popens:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        if popen.poll() is None:
            popen.kill()
            popen.wait()


def tail(path: Path, chars: int = 2000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:]
    return ""


def quiet_http_client_logs() -> None:
    """httpx logs every request at INFO; a gateway makes several per request and per second."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


class RedisServer:
    """A `redis-server` of our own on a free loopback port, keeping nothing on disk: for
    benchmarks and tests that must not touch (or may kill) a shared Redis."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / f"redis-{self.port}.log").open("ab") as log:
            self.popen = subprocess.Popen(
                [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.workdir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)


def server_config(app: Any, host: str, port: int, header_timeout_s: float = HEADER_TIMEOUT_S,
                  send_timeout_s: float | None = None, **settings: Any) -> Any:
    """uvicorn's `Config` for `app`, logging warnings only, closing a connection that has not
    sent a whole request head within `header_timeout_s` of its first byte (or of connecting),
    and, with `send_timeout_s`, one whose client has read nothing of its answer for that long
    while more waits to be sent (a WebSocket's too): uvicorn alone holds either for ever."""
    import uvicorn

    settings.setdefault("log_level", "warning")
    # Below info no access line is written, but uvicorn formats each one's arguments anyway.
    settings.setdefault("access_log", settings["log_level"] in ("trace", "debug", "info"))
    if send_timeout_s is not None:
        settings.setdefault("ws", send_timeout_websocket(send_timeout_s))
    return uvicorn.Config(app, host=host, port=port,
                          http=header_timeout_protocol(header_timeout_s, send_timeout_s),
                          **settings)


def run_server(config: Any) -> None:
    """Serve uvicorn's `config` in this thread until it stops. The thread runs asyncio and
    nothing else meanwhile, and sniffio is told so: anyio asks it which library runs on every
    cancel scope, and sniffing costs an `asyncio.current_task()` each time (a `getpid` system
    call in CPython 3.11: a disconnect watch's scope took 7.3 µs, 4.3 µs told). What its
    start left is settled first (`settle_startup_objects`)."""
    import sniffio
    import uvicorn

    sniffio.thread_local.name = "asyncio"
    settle_startup_objects()
    try:
        uvicorn.Server(config).run()
    finally:
        sniffio.thread_local.name = None


def header_timeout_protocol(timeout_s: float, send_timeout_s: float | None = None) -> type[Any]:
    """uvicorn's HTTP/1.1 protocol with a request head's deadline of `timeout_s` and, with
    `send_timeout_s`, a stalled reader's (`server_protocol.TimedProtocol`)."""
    from warmroute.server_protocol import TimedProtocol

    return type("HeaderTimeoutProtocol", (TimedProtocol,),
                {"head_timeout_s": timeout_s, "send_timeout_s": send_timeout_s})


def send_timeout_websocket(send_timeout_s: float) -> type[Any]:
    """uvicorn's WebSocket protocol dropping a client that reads nothing of what waits to be
    sent for `send_timeout_s` (`server_protocol.TimedWebSocketProtocol`)."""
    from warmroute.server_protocol import TimedWebSocketProtocol

    return type("SendTimeoutWebSocketProtocol", (TimedWebSocketProtocol,),
                {"send_timeout_s": send_timeout_s})


LOOP_SWITCH_INTERVAL_S = 0.0005


def favour_the_event_loop() -> None:
    """Hand the interpreter lock back to a waiting thread every 0.5 ms of running Python, not
    every 5 ms (CPython's default): a gateway runs its slow reads on worker threads (`/metrics`,
    the timeline, the dashboard: tens of ms at hundreds of engines) so that its event loop stays
    free, but while such a thread runs Python the loop gets the lock back only once per
    interval. Measured with a 0.5 ms ticker on the loop beside a thread running Python: gaps
    p50 6.4 / p99 7.8 ms at 5 ms, 1.7 / 2.6 ms at 0.5 ms. A handoff costs microseconds."""
    sys.setswitchinterval(LOOP_SWITCH_INTERVAL_S)


def settle_startup_objects() -> None:
    """Collect the garbage of a server's start, then move every object left (modules,
    classes, functions, the app: ~145,000 in a gateway) out of the garbage collector's sight
    (`gc.freeze`). A full collection walks every tracked object, and it stops the event loop
    while it does: 40 ms for a gateway's startup objects alone. They live as long as the
    process, so walking them finds nothing."""
    gc.collect()
    gc.freeze()


class BackgroundServer:
    """A uvicorn server for `app` on a thread of this process; `stop()` shuts it down."""

    def __init__(self, app: Any, host: str, port: int,
                 header_timeout_s: float = HEADER_TIMEOUT_S,
                 send_timeout_s: float | None = None) -> None:
        import uvicorn

        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(
            server_config(app, host, port, header_timeout_s, send_timeout_s, lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, name="warmroute-server")

    def start(self, timeout: float = SERVER_STARTUP_TIMEOUT_S) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server for {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
