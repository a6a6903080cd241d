"""Control-plane metrics: replicas by phase, restarts, cold-start phase durations.

Gauges are read from the store at scrape time (a custom collector), so they are right after a
restart of the server; cold-start durations are observed once per replica start, when the
supervisor marks the replica Ready.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from openeas.kernel.states import ReplicaPhase, desired_replicas
from openeas.store import Store

# The node label of a replica that runs on the server's machine (embedded runtimes: no node id).
LOCAL_NODE = "local"
COLD_START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store
        # The container engine found at server start ("podman 4.3.1"), "" when none: set by the server.
        self.container_engine: str | None = None

    def collect(self) -> Iterator[Metric]:
        by_phase: Counter[tuple[str, str]] = Counter()
        by_runtime: Counter[tuple[str, str]] = Counter()
        by_node: Counter[tuple[str, str]] = Counter()
        restarts: Counter[str] = Counter()
        for r in self.store.replicas():
            by_phase[(r.service, r.phase)] += 1
            by_runtime[(r.service, r.runtime)] += 1
            by_node[(r.service, r.node or LOCAL_NODE)] += 1
            restarts[r.service] += r.restart_count
        services = {s.name: s for s in self.store.list_services()}
        replicas = GaugeMetricFamily(
            "openeas_replicas", "Replicas by service and phase", labels=["service", "phase"]
        )
        for name in services:
            for phase in ReplicaPhase:
                replicas.add_metric([name, phase], by_phase.get((name, phase), 0))
        yield replicas
        desired = GaugeMetricFamily(
            "openeas_desired_replicas", "Desired replicas by service", labels=["service"]
        )
        restart = GaugeMetricFamily(
            "openeas_replica_restarts", "Restarts of the current replicas by service", labels=["service"]
        )
        for name, svc in services.items():
            desired.add_metric([name], desired_replicas(svc.state, svc.desired_replicas))
            restart.add_metric([name], restarts.get(name, 0))
        yield desired
        yield restart
        runtime = GaugeMetricFamily(
            "openeas_replicas_by_runtime", "Replicas by service and runtime (process, container)",
            labels=["service", "runtime"],
        )  # fmt: skip
        for (name, kind), n in sorted(by_runtime.items()):
            runtime.add_metric([name, kind], n)
        yield runtime
        node = GaugeMetricFamily(
            "openeas_replicas_by_node",
            f"Replicas by service and node (a Ray node id; {LOCAL_NODE!r}: the server's machine)",
            labels=["service", "node"],
        )
        for (name, where), n in sorted(by_node.items()):
            node.add_metric([name, where], n)
        yield node
        if self.container_engine is not None:
            engine = GaugeMetricFamily(
                "openeas_container_engine_available",
                "1 when a container engine works on this node (label: which), else 0",
                labels=["engine"],
            )
            engine.add_metric([self.container_engine], 1 if self.container_engine else 0)
            yield engine


class ControlMetrics:
    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self._store_collector = _StoreCollector(store)
        self.registry.register(self._store_collector)
        self.cold_start = Histogram(
            "openeas_replica_cold_start_seconds",
            "Seconds spent in each cold-start phase of a replica start (pull, fetch, start, warm, total)",
            ["service", "phase"],
            buckets=COLD_START_BUCKETS,
            registry=self.registry,
        )

    def set_container_engine(self, engine: str | None) -> None:
        """The engine the container runtime uses ("podman 4.3.1"), None when there is none."""
        self._store_collector.container_engine = engine or ""

    def add_collector(self, collector: Collector) -> None:
        """More gauges read at scrape time (the autoscaler's metric vs target, bounds...)."""
        self.registry.register(collector)

    def observe_cold_start(self, service: str, breakdown: Mapping[str, float | None]) -> None:
        """`breakdown`: span name (`fetch_s`, `start_s`, …) → seconds, None when not measured."""
        for key, value in breakdown.items():
            if value is not None:
                self.cold_start.labels(service, key.removesuffix("_s")).observe(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
