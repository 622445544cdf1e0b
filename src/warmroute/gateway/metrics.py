"""The gateway's Prometheus metrics, in a registry of its own (one per app; no globals).

Counters: routing decisions by reason (each failover move counts once as "failover"),
failovers and ejections per engine, prompt and cached tokens per engine as the engines
reported them in `usage`, answers per engine and status, streams whose engine broke mid-answer
by outcome (resumed on another engine, or failed when none could continue). Gauges, read from
the membership at scrape time: in-flight requests, health and requests waiting in the
admission gate per engine; whether the routing
state shared with other replicas is reachable. Histograms: seconds to an answer's first token,
and seconds a request waited in the admission gate.
Admin keys only read them (`/metrics`), unless the gateway runs with `--public-metrics`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from warmroute.gateway.membership import Membership
from warmroute.gateway.policies import REASONS
from warmroute.types import Usage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RESUME_OUTCOMES = ("resumed", "failed")
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class CachedCounter(Counter):
    """A counter whose labelled children are looked up in a dict first: prometheus_client's
    `labels` validates and takes a lock on every call, and these run on every request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._children: dict[tuple[str, ...], CachedCounter] = {}

    def labels(self, *values: Any, **named: Any) -> CachedCounter:
        if named:
            return super().labels(*values, **named)
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = super().labels(*values)
        return child


class GatewayMetrics:
    def __init__(self, membership: Membership) -> None:
        self.registry = CollectorRegistry()
        self.decisions = self._counter(
            "warmroute_gateway_routing_decisions",
            "Engine choices by reason: keyed, spilled, keyless-affinity, least-loaded, "
            "round-robin, and failover for each move to the next engine",
            ["reason"]
        )
        self.failovers = self._counter(
            "warmroute_gateway_failovers",
            "Requests moved away from this engine before their first byte",
            ["engine"]
        )
        self.ejections = self._counter(
            "warmroute_gateway_ejections",
            "Times this engine was taken out of rotation",
            ["engine"]
        )
        self.prompt_tokens = self._counter(
            "warmroute_gateway_prompt_tokens",
            "Prompt tokens reported by this engine",
            ["engine"]
        )
        self.cached_tokens = self._counter(
            "warmroute_gateway_cached_tokens",
            "Prompt tokens this engine served from its prefix cache",
            ["engine"]
        )
        self.answers = self._counter(
            "warmroute_gateway_answers",
            "Answers relayed from this engine, by HTTP status",
            ["engine", "status"]
        )
        self.stream_resumes = self._counter(
            "warmroute_gateway_stream_resumes",
            "Streams whose engine broke mid-answer, by outcome: resumed on another engine, "
            "or failed (no engine could continue; the client got an error event)",
            ["outcome"]
        )
        self.shared_state_up = Gauge(
            "warmroute_gateway_shared_state_up",
            "1 while the routing state shared with other gateway replicas (Redis) is "
            "reachable; 0 while this replica routes from its local state alone",
            registry=self.registry,
        )
        self.admission_wait = self._seconds(
            "warmroute_gateway_admission_wait_seconds",
            "Seconds a request placed on a saturated engine waited in the gateway's admission "
            "gate before it was sent (only those that waited)",
        )
        self.first_token = self._seconds(
            "warmroute_gateway_first_token_seconds",
            "Seconds from sending a request to an engine until its first token came back "
            "(a JSON answer: the whole answer, which is when its caller sees a token)",
        )
        self.registry.register(MembershipCollector(membership))
        membership.listeners.append(self.on_membership_change)
        self._zero_series(membership)

    def _zero_series(self, membership: Membership) -> None:
        """Every series exists from the start, at 0."""
        for reason in REASONS:
            self.decisions.labels(reason)
        for outcome in RESUME_OUTCOMES:
            self.stream_resumes.labels(outcome)
        for engine_id in membership.engines:
            for counter in (self.failovers, self.ejections, self.prompt_tokens,
                            self.cached_tokens):
                counter.labels(engine_id)

    def _seconds(self, name: str, documentation: str) -> Histogram:
        return Histogram(name, documentation, buckets=FIRST_TOKEN_BUCKETS,
                         registry=self.registry)

    def _counter(self, name: str, documentation: str, labels: list[str]) -> Counter:
        return CachedCounter(name, documentation, labels, registry=self.registry)

    def on_membership_change(self, engine_id: str, healthy: bool, cause: str) -> None:
        if not healthy:
            self.ejections.labels(engine_id).inc()

    def record_usage(self, engine_id: str, usage: Usage | None) -> None:
        if usage is not None:
            self.prompt_tokens.labels(engine_id).inc(usage.prompt_tokens)
            self.cached_tokens.labels(engine_id).inc(usage.cached_tokens)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MembershipCollector:
    """In-flight counts and health, read at scrape time so they can never drift."""

    def __init__(self, membership: Membership) -> None:
        self.membership = membership

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "warmroute_gateway_in_flight", "Requests in flight to this engine", labels=["engine"]
        )
        healthy = GaugeMetricFamily(
            "warmroute_gateway_engine_healthy", "1 if the engine is in rotation", labels=["engine"]
        )
        waiting = GaugeMetricFamily(
            "warmroute_gateway_admission_waiting",
            "Requests placed on this engine and waiting in the admission gate", labels=["engine"]
        )
        for state in list(self.membership.engines.values()):  # read on a worker thread too
            in_flight.add_metric([state.engine_id], state.in_flight)
            healthy.add_metric([state.engine_id], 1.0 if state.healthy else 0.0)
            waiting.add_metric([state.engine_id], state.waiting)
        yield in_flight
        yield healthy
        yield waiting
