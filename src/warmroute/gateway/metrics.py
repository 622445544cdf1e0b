"""The gateway's Prometheus metrics, in a registry of its own (one per app; no globals).

Counters: routing decisions by reason (each failover move counts once as "failover"),
failovers and ejections per engine, prompt and cached tokens per engine as the engines
reported them in `usage`, answers per engine and status, streams whose engine broke mid-answer
by outcome (resumed on another engine, or failed when none could continue). Gauges, read from
the membership at scrape time: in-flight requests and health per engine.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from warmroute.gateway.membership import Membership
from warmroute.gateway.policies import REASONS
from warmroute.types import Usage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RESUME_OUTCOMES = ("resumed", "failed")


class GatewayMetrics:
    def __init__(self, membership: Membership) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "warmroute_gateway_routing_decisions",
            "Engine choices by reason: keyed, spilled, keyless-affinity, least-loaded, "
            "round-robin, and failover for each move to the next engine",
            ["reason"],
            registry=self.registry,
        )
        self.failovers = Counter(
            "warmroute_gateway_failovers",
            "Requests moved away from this engine before their first byte",
            ["engine"],
            registry=self.registry,
        )
        self.ejections = Counter(
            "warmroute_gateway_ejections",
            "Times this engine was taken out of rotation",
            ["engine"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "warmroute_gateway_prompt_tokens",
            "Prompt tokens reported by this engine",
            ["engine"],
            registry=self.registry,
        )
        self.cached_tokens = Counter(
            "warmroute_gateway_cached_tokens",
            "Prompt tokens this engine served from its prefix cache",
            ["engine"],
            registry=self.registry,
        )
        self.answers = Counter(
            "warmroute_gateway_answers",
            "Answers relayed from this engine, by HTTP status",
            ["engine", "status"],
            registry=self.registry,
        )
        self.stream_resumes = Counter(
            "warmroute_gateway_stream_resumes",
            "Streams whose engine broke mid-answer, by outcome: resumed on another engine, "
            "or failed (no engine could continue; the client got an error event)",
            ["outcome"],
            registry=self.registry,
        )
        self.registry.register(MembershipCollector(membership))
        membership.listeners.append(self.on_membership_change)
        for reason in REASONS:  # every series exists from the start, at 0
            self.decisions.labels(reason)
        for outcome in RESUME_OUTCOMES:
            self.stream_resumes.labels(outcome)
        for engine_id in membership.engines:
            for counter in (self.failovers, self.ejections, self.prompt_tokens,
                            self.cached_tokens):
                counter.labels(engine_id)

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
        for state in self.membership.engines.values():
            in_flight.add_metric([state.engine_id], state.in_flight)
            healthy.add_metric([state.engine_id], 1.0 if state.healthy else 0.0)
        yield in_flight
        yield healthy
