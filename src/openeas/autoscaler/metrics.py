"""Collection, apart from decision: the narrow protocols the loop reads metrics through.

- :class:`TrafficStats` is the gateway's counters per service (arrivals, in flight, held). The
  control plane's ``openeas.telemetry.gateway_stats.GatewayStats`` (fed by the gateways'
  counters datagram, the one channel for them) has exactly these methods.
- :class:`MetricSource` answers one or more metric kinds with a service-wide total over a window;
  sources register by kind in :func:`sources_by_kind` (an unknown kind has no source: "no data",
  never zero). Sources that do I/O do it in ``collect``, called by the loop at its scrape period.
- :class:`ExplainedSource` is a source that also says where a total came from (the custom
  metrics' scraper: a gauge's samples, or its histogram by Little's law); describe and /metrics
  show it.
- :class:`ColdStarts` keeps the recent cold-start times of each service (the pre-scaling lead).

Everything takes ``now`` from the loop's injected clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from openeas.spec.autoscaling import AutoscalingPolicy, MetricTarget
from openeas.telemetry.coldstart import nearest_rank


class TrafficStats(Protocol):
    """A service's requests as the gateway sees them (the shared gateway-stats interface)."""

    def arrival_rate(self, service: str, window_s: float, now: float) -> float | None: ...
    def mean_in_flight(self, service: str, window_s: float, now: float) -> float | None: ...
    def held(self, service: str, now: float) -> int: ...
    def last_seen(self, service: str) -> float | None: ...


@dataclass(frozen=True)
class ReplicaTarget:
    """A Ready replica a collector may read."""

    id: str
    host: str
    port: int
    pid: int | None


@dataclass(frozen=True)
class ServiceView:
    """What collectors know of one autoscaled service."""

    name: str
    policy: AutoscalingPolicy
    replicas: tuple[ReplicaTarget, ...]  # Ready ones
    cores: float = 1.0  # metadata.cpu (the `cpu` metric's 100%)


class MetricSource(Protocol):
    kinds: tuple[str, ...]  # metric kinds answered (METRIC_KINDS)

    async def collect(self, services: Sequence[ServiceView], now: float) -> None:
        """Read what the windows need (I/O); called by the loop every scrape period."""
        ...

    def total(self, service: ServiceView, metric: MetricTarget, window_s: float, now: float) -> float | None:
        """The metric summed over the service, averaged over the window; None = no data."""
        ...


@runtime_checkable
class ExplainedSource(Protocol):
    def reading(self, service: ServiceView, metric: MetricTarget, window_s: float, now: float) -> str | None:
        """Where ``total`` over the same window took the metric from; None without data."""
        ...


class TrafficSource:
    """``qps`` and ``concurrent_requests`` from the gateway's counters (held requests count as
    in flight: they are load the replicas will have to take)."""

    kinds: tuple[str, ...] = ("qps", "concurrent_requests")

    def __init__(self, stats: TrafficStats) -> None:
        self.stats = stats

    async def collect(self, services: Sequence[ServiceView], now: float) -> None:
        return None  # pushed or scraped elsewhere

    def total(self, service: ServiceView, metric: MetricTarget, window_s: float, now: float) -> float | None:
        if metric.kind == "qps":
            return self.stats.arrival_rate(service.name, window_s, now)
        in_flight = self.stats.mean_in_flight(service.name, window_s, now)
        if in_flight is None:
            return None
        return in_flight + self.stats.held(service.name, now)


def sources_by_kind(sources: Iterable[MetricSource]) -> dict[str, MetricSource]:
    """Kind → source; a kind two sources claim is an error (no silent precedence)."""
    out: dict[str, MetricSource] = {}
    for s in sources:
        for kind in s.kinds:
            if kind in out:
                raise ValueError(f"metric kind {kind!r} has two sources: {out[kind]!r} and {s!r}")
            out[kind] = s
    return out


def aggregate(per_replica: Mapping[str, float], ready: int, how: str) -> float | None:
    """Service total from the replicas that answered: their sum scaled to every Ready replica
    (``avg``), or the largest times the Ready count (``max``). No answer: None."""
    if not per_replica:
        return None
    values = list(per_replica.values())
    if how == "max":
        return max(values) * ready
    return sum(values) / len(values) * ready


class ColdStarts:
    """Recent cold-start totals per service (seconds), for the cron pre-scaling lead."""

    def __init__(self, keep: int = 50) -> None:
        self.keep = keep
        self.by_service: dict[str, deque[float]] = {}

    def observe(self, service: str, total_s: float | None) -> None:
        if total_s is not None and math.isfinite(total_s) and total_s >= 0:
            self.by_service.setdefault(service, deque(maxlen=self.keep)).append(float(total_s))

    def p90(self, service: str) -> float | None:
        """The 90th percentile (nearest rank) of the service's recent cold starts."""
        values = sorted(self.by_service.get(service, ()))
        return nearest_rank(values, 0.9) if values else None
