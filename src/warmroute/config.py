"""Frozen configuration, built once from CLI flags and `WARMROUTE_*` environment variables.

This is the only module that reads the environment; everything else receives a config object.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from warmroute.pricing import ModelPrice

DType = Literal["auto", "bfloat16", "float32"]


def warmroute_home() -> Path:
    """Where built-in models and other caches live (`$WARMROUTE_HOME`, else ~/.cache/warmroute)."""
    env = os.environ.get("WARMROUTE_HOME")
    return Path(env) if env else Path.home() / ".cache" / "warmroute"


def env_str(name: str) -> str | None:
    """A `WARMROUTE_<name>` setting, or None when unset or empty."""
    return os.environ.get(f"WARMROUTE_{name}") or None


ENGINE_API_KEY_ENV = "WARMROUTE_ENGINE_API_KEY"


def engine_api_key_from_env() -> str | None:
    """The key engines require and the gateway sends them (`$WARMROUTE_ENGINE_API_KEY`)."""
    return os.environ.get(ENGINE_API_KEY_ENV) or None


def env_int(name: str) -> int | None:
    """An integer `WARMROUTE_<name>` setting, or None when unset."""
    raw = os.environ.get(f"WARMROUTE_{name}")
    return int(raw) if raw else None


DEFAULT_PREFILL_CHUNK = 2048  # prompt tokens per scheduler step (vLLM: max_num_batched_tokens)
SchedulingPolicy = Literal["fcfs", "priority"]
SCHEDULING_POLICIES: tuple[SchedulingPolicy, ...] = ("fcfs", "priority")


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
    max_waiting: int = 256  # requests queued for admission; beyond: 503 with retry-after
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    # "priority": a request's `priority` (lower first) orders prefill, as vLLM's policy does.
    scheduling_policy: SchedulingPolicy = "fcfs"
    max_model_len: int | None = None
    engine_id: str = ""
    served_model_name: str | None = None
    threads: int | None = None
    home: Path = Path()
    # Callers must send `Authorization: Bearer <api_key>` (every route but /health) when set.
    api_key: str | None = field(default=None, repr=False)

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


GATEWAY_DEFAULT_MAX_BODY_BYTES = 20 * 2**20
RoutingPolicy = Literal["cache-aware", "hash", "round-robin"]
ROUTING_POLICIES: tuple[RoutingPolicy, ...] = ("cache-aware", "hash", "round-robin")


def redacted_url(url: str) -> str:
    """`url` as it may be shown (answers, metrics, logs): any `user:password@` becomes `***@`."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


@dataclass(frozen=True)
class EngineEndpoint:
    """One engine behind the gateway: its base URL (which may carry credentials: show
    `shown_url`), the id named in `x-warmroute-engine`, and the key it is called with."""

    url: str
    engine_id: str
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.api_key and not (self.api_key.isascii() and self.api_key.isprintable()
                                 and " " not in self.api_key):
            raise ValueError(f"engine {self.engine_id}: an api_key is printable ASCII, no spaces")

    @staticmethod
    def parse(spec: str) -> EngineEndpoint:
        """`URL` or `ID=URL`; without an id, the id is the URL's host:port."""
        engine_id, sep, url = spec.partition("=")
        if not sep or "://" in engine_id:
            engine_id, url = "", spec
        return EngineEndpoint.of(url, engine_id or None)

    @staticmethod
    def of(url: str, engine_id: str | None = None, model: str | None = None,
           api_key: str | None = None) -> EngineEndpoint:
        url = url.rstrip("/")
        if "://" not in url:
            url = "http://" + url
        netloc, rest = urlsplit(url).netloc, url.split("://", 1)[1]
        shown = netloc.rpartition("@")[2] + rest[len(netloc):]  # never the URL's credentials
        return EngineEndpoint(url, engine_id or shown, model, api_key or None)

    @property
    def shown_url(self) -> str:
        return redacted_url(self.url)

    def __repr__(self) -> str:  # never the URL's credentials, nor the key
        return f"EngineEndpoint({self.shown_url!r}, {self.engine_id!r}, model={self.model!r})"

    def auth_headers(self) -> dict[str, str]:
        """What a request to this engine carries to be let in."""
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True)
class GatewayConfig:
    """The front door: which engines, how to place requests on them, how to watch their health."""

    engines: tuple[EngineEndpoint, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    epsilon: float = 0.25
    # Additive floor on the in-flight cap: max(⌈(1+ε)·average⌉, ⌈average⌉ + slack), so that at
    # low load a conversation's busy home is not "full" (SMG's prefix_hash uses average + 10).
    load_slack: int = 10
    policy: RoutingPolicy = "cache-aware"
    max_body_bytes: int = GATEWAY_DEFAULT_MAX_BODY_BYTES
    cache_salt: str = "warmroute-default-tenant"
    probe_interval_s: float = 1.0
    probe_timeout_s: float = 2.0
    probe_failures_to_eject: int = 2
    connect_timeout_s: float = 2.0
    upstream_timeout_s: float = 600.0
    grpc_port: int | None = None
    data_dir: Path = Path(".warmroute")
    database_url: str | None = None
    response_ttl_s: float = 30 * 24 * 3600.0
    purge_interval_s: float = 3600.0
    require_api_keys: bool = True
    cache_isolation: Literal["team", "key"] = "team"
    cache_secret: str | None = None
    redis_url: str | None = None
    # With a Redis URL, replicas share routing state (conversation homes, placements): see
    # gateway/shared_state.py. Homes expire after a day unused; the log keeps 50,000 events.
    share_routing: bool = True
    # API keys are read from the store at most this often each: a revoked key stops working
    # within this many seconds.
    key_cache_s: float = 2.0
    routing_prefix: str = "wr:routing"
    home_ttl_s: int = 24 * 3600
    routing_log_entries: int = 50_000
    max_conversations: int = 1_000_000
    max_conversations_per_tenant: int = 250_000
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    # A stream whose engine breaks mid-answer is continued on the next engine at most this
    # many times (0: the client gets an error event at the first break).
    max_resumes: int = 2
    # Sent to every engine that has no key of its own (`[[engines]] api_key`).
    engine_api_key: str | None = field(default=None, repr=False)
    # `/metrics` without an admin key: only for a private network that Prometheus scrapes.
    public_metrics: bool = False
    # Faults and bounded waits (README, "Limits and failures"). An engine that answers a 5xx
    # while its probe passes is ejected once this many different requests failed there in a
    # minute; at most `max_in_flight` requests at engines at once (beyond: 503 at once); a
    # request waits at most `pool_timeout_s` for a connection to an engine.
    request_failures_to_eject: int = 3
    max_in_flight: int = 1024
    pool_timeout_s: float = 2.0
    # A client has `header_timeout_s` to send a request's headers and `body_timeout_s` for
    # its whole body (else the connection is closed, or the answer is 408).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    # A client that reads nothing of its answer for `send_timeout_s` while more waits to be
    # sent is dropped (its stream stops and frees its engine), as nginx's `send_timeout`.
    send_timeout_s: float = 60.0
    # Deferred completions pending at once: in all, and per team (beyond: 429).
    max_deferred: int = 1000
    max_deferred_per_team: int = 100
    # A request placed on an engine that has `admission_work` chunks of prefill
    # (~50-64 tokens each) sent from this gateway and not yet answered waits its turn here,
    # least work first (`gateway/admission.py`; 0: never held); a long prompt is overtaken
    # only by what comes within `admission_ms_per_chunk` x its extra work after it, and none
    # waits more than `admission_max_hold_s`.
    admission_work: float = 128.0
    admission_ms_per_chunk: float = 10.0
    admission_max_hold_s: float = 5.0
    # Send each request's `priority` (vLLM's field; lower is prefilled sooner): the time its
    # first token is due, in ms, its arrival plus `admission_ms_per_chunk` x its prefill work,
    # at most `admission_max_hold_s` (so a long prompt is overtaken only by what comes within
    # that long after it).
    # For engines that schedule by priority (`--scheduling-policy priority`: warmroute's and
    # vLLM's); one whose health says `fcfs`, or that refuses the field once, is sent none.
    # A client's own is never sent.
    engine_priority: bool = False

    @property
    def store_url(self) -> str:
        """`--database-url`, else a SQLite file in the data dir."""
        return self.database_url or str(self.data_dir / "warmroute.db")

    @property
    def keyed_engines(self) -> tuple[EngineEndpoint, ...]:
        """The engines as the gateway calls them: each with its own key, else `engine_api_key`."""
        if not self.engine_api_key:
            return self.engines
        return tuple(e if e.api_key else replace(e, api_key=self.engine_api_key)
                     for e in self.engines)

    def __post_init__(self) -> None:
        for engine in self.keyed_engines:  # both would be sent as the one Authorization header
            if engine.api_key and engine.shown_url != engine.url:
                raise ValueError(f"engine {engine.engine_id}: give its credentials in the URL "
                                 "or as an API key, not both")
        ids = [e.engine_id for e in self.engines]
        if len(set(ids)) != len(ids):
            raise ValueError(f"engine ids must be unique, got {ids}")
        if self.epsilon < 0:
            raise ValueError("epsilon must be >= 0")
        if self.max_body_bytes < 1 or self.probe_failures_to_eject < 1:
            raise ValueError("max_body_bytes and probe_failures_to_eject must be positive")
        if self.load_slack < 0:
            raise ValueError("load_slack must be >= 0")
        if self.policy not in ROUTING_POLICIES:
            raise ValueError(f"policy must be one of {list(ROUTING_POLICIES)}, got {self.policy!r}")
        if self.max_resumes < 0:
            raise ValueError("max_resumes must be >= 0")
        if min(self.admission_work, self.admission_ms_per_chunk, self.admission_max_hold_s) < 0:
            raise ValueError("the admission settings must not be negative")
        if min(self.header_timeout_s, self.body_timeout_s, self.send_timeout_s) <= 0:
            raise ValueError("header_timeout_s, body_timeout_s and send_timeout_s must be "
                             "positive")
        if min(self.request_failures_to_eject, self.max_in_flight, self.max_deferred,
               self.max_deferred_per_team) < 1:
            raise ValueError("request_failures_to_eject, max_in_flight and the deferred "
                             "bounds must be positive")

    @staticmethod
    def from_toml(path: Path) -> GatewayConfig:
        """Read `[gateway]` settings and `[[engines]]` (url, optional id, model and api_key)
        from TOML."""
        with path.open("rb") as handle:
            data = tomllib.load(handle)
        settings = dict(data.get("gateway", {}))
        if "data_dir" in settings:
            settings["data_dir"] = Path(settings["data_dir"])
        settings["prices"] = {
            model: ModelPrice.parse(price) for model, price in data.get("prices", {}).items()
        }
        known = {f.name for f in fields(GatewayConfig)} - {"engines", "prices"}
        unknown = set(settings) - known - {"prices"}
        if unknown:
            raise ValueError(f"{path}: unknown [gateway] settings {sorted(unknown)}")
        engines = tuple(
            EngineEndpoint.of(str(e["url"]), e.get("id"), e.get("model"), e.get("api_key"))
            for e in data.get("engines", [])
        )
        return GatewayConfig(engines=engines, **settings)


@dataclass(frozen=True)
class ServeConfig:
    """`warmroute serve`: N local engines plus a gateway, all on 127.0.0.1."""

    engines: int = 2
    model: str = "builtin:tiny"
    port: int = 8000
    grpc_port: int = 50051
    data_dir: Path = Path(".warmroute")
    dtype: DType = "auto"
    cores: int = 1
    database_url: str | None = None
    startup_timeout_s: float = 180.0

    @property
    def threads_per_engine(self) -> int:
        return max(1, self.cores // max(1, self.engines))


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def child_process_env(threads: int, engine_api_key: str | None = None) -> dict[str, str]:
    """The environment for a child engine process: ours, with its thread budget pinned and
    idle OpenMP threads told to sleep rather than spin (engines share the cores), and the key
    it must require when given (in the environment, not on a command line others can read)."""
    env = dict(os.environ)
    if engine_api_key:
        env[ENGINE_API_KEY_ENV] = engine_api_key
    env["OMP_NUM_THREADS"] = str(threads)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env
