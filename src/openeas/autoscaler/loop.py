"""The autoscaler's I/O loop: collect, decide, write the desired count.

Every ``tick_s`` (or at once after :meth:`Autoscaler.wake`, e.g. when the gateway holds a
request for a service at 0 replicas) it reads the running services and their replicas from the
store, reads the gateway's counters, every ``scrape_s`` lets the collectors read the replicas
(``/metrics``, psutil, NVML), and calls the pure :func:`~openeas.autoscaler.policy.decide` for
each service with a policy. A decision that changes the count is written into the store as the
service's desired replicas with an ``Autoscaled`` event carrying the metric values and the reason;
the reconciler does the rest (it never starts or stops a process itself). Every decision, the ones
that change nothing included, is kept for ``describe`` and ``/metrics``. It is the one automatic
writer of desired replicas: an async service at zero with a queued request is started here too
(``ScaleFromZero``, autoscaler/activation.py), with or without a policy.

State is in memory: after a control-plane restart the windows start empty ("no data" moves
nothing until they fill) and the current count stands in for the stabilization history, so a
restart or a new deploy never scales down before a whole down window. Time comes from the
injected clock (windows) and ``wall`` (cron rules).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from openeas.autoscaler.activation import QueueActivation
from openeas.autoscaler.cron import next_firing
from openeas.autoscaler.metrics import (
    ColdStarts,
    ExplainedSource,
    MetricSource,
    ReplicaTarget,
    ServiceView,
    TrafficSource,
    TrafficStats,
    sources_by_kind,
)
from openeas.autoscaler.policy import Decision, DecisionContext, Observation, PolicyState, Traffic, decide
from openeas.errors import OpenEASError
from openeas.kernel.clock import LOOP_CLOCK, Clock, set_from_any_thread
from openeas.kernel.states import ReplicaPhase, ServiceState
from openeas.spec.autoscaling import METRIC_UNITS, AutoscalingPolicy, Defaults
from openeas.store import Store

log = logging.getLogger("openeas.autoscaler")


@dataclass
class AutoscalerConfig:
    tick_s: float = 0.1  # seconds between decisions when nothing wakes the loop
    scrape_s: float = 1.0  # seconds between reads of the replicas (/metrics, psutil, NVML)
    prescale_margin_s: float = 1.0  # added to the p90 cold start: a decision and a start take time


def _iso(t: float | None) -> str | None:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat() if t is not None else None


@dataclass
class ServiceRecord:
    """What the loop remembers of one autoscaled service."""

    policy: AutoscalingPolicy
    version: int
    state: PolicyState = field(default_factory=PolicyState)
    decision: Decision | None = None
    decided_at: float | None = None  # epoch seconds
    ready: int = 0
    last_change: tuple[float, str] | None = None  # (epoch seconds, event message)
    lead_s: float = Defaults.PRESCALE_FALLBACK_S
    cores: float = 1.0  # metadata.cpu of the version (the `cpu` metric's 100%)
    readings: dict[str, str] = field(default_factory=dict)  # metric key → where its value came from


class Autoscaler:
    def __init__(
        self,
        store: Store,
        *,
        traffic: TrafficStats | None = None,
        sources: Sequence[MetricSource] = (),
        activation: QueueActivation | None = None,
        wake_reconciler: Callable[[], None] = lambda: None,
        clock: Clock = LOOP_CLOCK,
        cfg: AutoscalerConfig | None = None,
    ) -> None:
        self.store = store
        self.extra_sources = list(sources)
        # Async services at zero with a queued request: started like a held request starts one.
        self.activation = activation
        self.wake_reconciler = wake_reconciler
        self.clock = clock  # now for the windows, wall for cron rules, sleep for the tick
        self.cfg = cfg or AutoscalerConfig()
        self.records: dict[str, ServiceRecord] = {}
        self._no_policy: dict[str, int] = {}  # running service → its current version, which has no policy
        self.cold_starts = ColdStarts()
        self.events: Tally[tuple[str, str]] = Tally()  # (service, up|down) → count-changing decisions
        self._seen_cold: set[str] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_scrape: float | None = None
        # Where qps and concurrency come from: the gateways' counters datagram (GatewayStats).
        self.traffic = traffic
        base: list[MetricSource] = [TrafficSource(traffic)] if traffic is not None else []
        self.sources = sources_by_kind([*base, *self.extra_sources])

    def wake(self, service: str | None = None) -> None:
        """Decide now (the gateway holds a request for `service`); safe from any thread."""
        set_from_any_thread(self._wake, self._loop)

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self.tick()
                except Exception:
                    log.exception("autoscaler pass failed")
                await self.clock.sleep(self.cfg.tick_s, until=self._wake)
        finally:
            await self.close()

    async def close(self) -> None:
        for s in self.extra_sources:
            closer = getattr(s, "close", None)
            if closer is not None:
                await closer()

    # ---- one pass -------------------------------------------------------------------------------
    def _policy(self, name: str, version: int) -> AutoscalingPolicy | None:
        rec = self.records.get(name)
        if rec is not None and rec.version == version:
            return rec.policy
        if self._no_policy.get(name) == version:
            return None  # read and parsed once, not each tick: 50 services made 500 parses a second
        try:
            spec = self.store.version_spec(name, version)
            policy = spec.autoscaling_policy()
        except Exception as exc:  # one unreadable spec must not stop the others' decisions
            log.warning("autoscaler: %s version %s: no policy (%s)", name, version, exc)
            return None
        if policy is None:
            self.records.pop(name, None)
            self._no_policy[name] = version
            return None
        self._no_policy.pop(name, None)
        old = self.records.get(name)
        self.records[name] = ServiceRecord(
            policy, version, state=old.state if old else PolicyState(), cores=float(spec.metadata.cpu or 1.0)
        )
        return policy

    async def tick(self) -> None:
        now, wall = self.clock.now(), self.clock.wall()
        services = [s for s in self.store.list_services() if s.state == ServiceState.RUNNING]
        replicas = self.store.replicas()
        for r in replicas:  # cold starts of this node's replicas: the pre-scaling lead
            total = (r.cold_start or {}).get("total_s")
            if r.phase == ReplicaPhase.READY and r.id not in self._seen_cold and total is not None:
                self._seen_cold.add(r.id)
                self.cold_starts.observe(r.service, total)
        views: list[ServiceView] = []
        for svc in services:
            policy = self._policy(svc.name, svc.current_version)
            if policy is None:
                continue
            ready = tuple(
                ReplicaTarget(r.id, r.host, r.port, r.pid)
                for r in replicas
                if r.service == svc.name and r.phase == ReplicaPhase.READY and not r.stopping and r.port
            )
            views.append(ServiceView(svc.name, policy, ready, self.records[svc.name].cores))
        for name in set(self.records) - {v.name for v in views}:
            del self.records[name]  # stopped, deleted, or no policy any more
        for name in set(self._no_policy) - {s.name for s in services}:
            del self._no_policy[name]  # stopped or deleted: a new service of that name is read again
        current = {s.name: s.desired_replicas for s in services}
        if self.activation is not None:
            for name, backlog in (await self.activation.due(services, now)).items():
                if self._activate(name, backlog):
                    current[name] = 1
        await self._collect(views, now)
        for view in views:
            try:
                self._decide(view, current[view.name], now, wall)
            except Exception:
                log.exception("autoscaler: deciding for %s failed", view.name)

    async def _collect(self, views: Sequence[ServiceView], now: float) -> None:
        if views and (self._last_scrape is None or now - self._last_scrape >= self.cfg.scrape_s):
            self._last_scrape = now
            unique = {id(s): s for s in self.sources.values()}
            await asyncio.gather(*(s.collect(views, now) for s in unique.values()))

    def _decide(self, view: ServiceView, current: int, now: float, wall: float) -> None:
        rec = self.records[view.name]
        p = view.policy
        if rec.decision is None and not rec.state.recommendations:
            # A policy seen for the first time (a deploy, or a restarted control plane) has no
            # history: the current count stands in for it, so nothing scales down before a
            # whole down window of evidence.
            rec.state = replace(rec.state, recommendations=((now, current),))
        obs: dict[str, Observation] = {}
        for m in p.metrics:
            src = self.sources.get(m.kind)
            if src is None:
                obs[m.key] = Observation(None)
                continue
            obs[m.key] = Observation(
                src.total(view, m, p.metric_window_s, now), src.total(view, m, p.panic_window_s, now)
            )
            how = src.reading(view, m, p.metric_window_s, now) if isinstance(src, ExplainedSource) else None
            if how is not None:
                rec.readings[m.key] = how
            else:
                rec.readings.pop(m.key, None)
        traffic = self._traffic(view.name, p, now)
        p90 = self.cold_starts.p90(view.name)
        rec.lead_s = (p90 + self.cfg.prescale_margin_s) if p90 is not None else Defaults.PRESCALE_FALLBACK_S
        ctx = DecisionContext(
            policy=p,
            now=now,
            wall=wall,
            current=current,
            ready=len(view.replicas),
            observations=obs,
            traffic=traffic,
            state=rec.state,
            prescale_lead_s=rec.lead_s,
        )
        decision, rec.state = decide(ctx)
        was_valid = rec.decision.valid if rec.decision is not None else True
        rec.decision, rec.decided_at, rec.ready = decision, wall, len(view.replicas)
        if decision.changed:
            self._write(view.name, decision, wall)
        elif was_valid and not decision.valid:
            self.store.record_event(view.name, "AutoscalerNoData", decision.reason, type="Warning")

    def _traffic(self, name: str, p: AutoscalingPolicy, now: float) -> Traffic | None:
        t = self.traffic
        if t is None:
            return None
        rate = t.arrival_rate(name, p.metric_window_s, now)
        flying = t.mean_in_flight(name, p.metric_window_s, now)
        if rate is None or flying is None:
            return None
        # From zero, what is in flight *now* matters (a request just arrived); the window's mean
        # would lag it.
        latest = t.mean_in_flight(name, 0.0, now) or 0.0
        return Traffic(arrival_rate=rate, in_flight=max(flying, latest), held=t.held(name, now))

    def _activate(self, name: str, backlog: Any) -> bool:
        """An async service at zero with a backlog: desired replicas 0 → 1 (``ScaleFromZero``)."""
        message = (
            f"{backlog.queued} queued and {backlog.in_flight} in-flight async requests; "
            "desired replicas 0 → 1"
        )
        try:
            self.store.update_service(name, desired_replicas=1, event=("ScaleFromZero", message))
        except OpenEASError as exc:  # deleted meanwhile
            log.info("autoscaler: %s: %s", name, exc)
            return False
        log.info("async service %s has a backlog at 0 replicas: scaled to 1", name)
        self.wake_reconciler()
        return True

    def _write(self, name: str, d: Decision, wall: float) -> None:
        direction = "up" if d.desired > d.current else "down"
        # Which reading moved it (a gauge's samples, or its histogram by Little's law).
        how = sorted(self.records[name].readings.items())
        message = d.reason + "".join(f"; {k} read as {v}" for k, v in how)
        try:
            self.store.update_service(name, desired_replicas=d.desired, event=("Autoscaled", message))
        except OpenEASError as exc:  # deleted meanwhile
            log.info("autoscaler: %s: %s", name, exc)
            return
        self.events[(name, direction)] += 1
        self.records[name].last_change = (wall, message)
        log.info("%s: %s", name, message)
        self.wake_reconciler()

    # ---- views ----------------------------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any] | None:
        """What describe shows: metric vs target, desired vs ready, the last decision's reason
        (also when it changed nothing), the bounds and the rule in force, the next rule."""
        rec = self.records.get(name)
        if rec is None:
            return None
        d = rec.decision
        p = rec.policy
        out: dict[str, Any] = {
            "policy": policy_view(p),
            "ready_replicas": rec.ready,
            "cold_start_p90_s": self.cold_starts.p90(name),
            "prescale_lead_s": p.prescale_lead_s if p.prescale_lead_s is not None else rec.lead_s,
            "last_change": (
                {"time": _iso(rec.last_change[0]), "message": rec.last_change[1]} if rec.last_change else None
            ),
            "next_rule": next_rule(p, self.clock.wall()),
        }
        if d is None:
            out.update(decision=None, metrics=[])
            return out
        out["decision"] = {
            "time": _iso(rec.decided_at),
            "desired_replicas": d.desired,
            "current_replicas": d.current,
            "recommendation": d.recommendation,
            "valid": d.valid,
            "panic": d.panic,
            "reason": d.reason,
        }
        out["bounds"] = {
            "min_replicas": d.bounds.min_replicas,
            "max_replicas": d.bounds.max_replicas,
            "rule": d.bounds.rule,
            "rule_since": _iso(d.bounds.since),
            "prescale": d.bounds.prescale,
            "prescale_at": _iso(d.bounds.prescale_at),
        }
        out["metrics"] = [
            {
                "metric": r.key,
                "value": r.per_replica,
                "target": r.target,
                "total": r.total,
                "unit": METRIC_UNITS.get(r.key.split(":", 1)[0], ""),
                "recommendation": r.recommendation,
                "reading": rec.readings.get(r.key),
            }
            for r in d.readings
        ]
        return out

    def collector(self) -> Collector:
        return _Collector(self)


def policy_view(p: AutoscalingPolicy) -> dict[str, Any]:
    data = p.model_dump(mode="json")
    data["metrics"] = [{**m.model_dump(mode="json"), "key": m.key} for m in p.metrics]
    return data


def next_rule(p: AutoscalingPolicy, wall: float) -> dict[str, Any] | None:
    best: tuple[float, str] | None = None
    for r in p.rules:
        at = next_firing(r, wall)
        if at is not None and (best is None or at < best[0]):
            best = (at, r.name)
    return {"name": best[1], "at": _iso(best[0])} if best else None


class _Collector(Collector):
    """Control-plane gauges: each metric vs its target, recommended vs desired bounds, validity."""

    def __init__(self, scaler: Autoscaler) -> None:
        self.scaler = scaler

    def collect(self) -> Iterator[Metric]:
        value = GaugeMetricFamily(
            "openeas_autoscaler_metric_value",
            "Current metric value per Ready replica",
            labels=["service", "metric"],
        )
        target = GaugeMetricFamily(
            "openeas_autoscaler_metric_target",
            "Target metric value per replica",
            labels=["service", "metric"],
        )
        recommended = GaugeMetricFamily(
            "openeas_autoscaler_recommended_replicas", "Highest metric recommendation", labels=["service"]
        )
        lo = GaugeMetricFamily(
            "openeas_autoscaler_min_replicas", "Min in force (cron rules)", labels=["service"]
        )
        hi = GaugeMetricFamily(
            "openeas_autoscaler_max_replicas", "Max in force (cron rules)", labels=["service"]
        )
        reading = GaugeMetricFamily(
            "openeas_autoscaler_metric_reading",
            "1 for where the metric value came from (a gauge's samples, or rate(<histogram>_sum))",
            labels=["service", "metric", "reading"],
        )
        valid = GaugeMetricFamily(
            "openeas_autoscaler_decision_valid",
            "1 when every metric had data at the last decision",
            labels=["service"],
        )
        for name, rec in sorted(self.scaler.records.items()):
            d = rec.decision
            if d is None:
                continue
            for r in d.readings:
                target.add_metric([name, r.key], r.target)
                if r.per_replica is not None:
                    value.add_metric([name, r.key], r.per_replica)
                how = rec.readings.get(r.key)  # one read: the loop may change it meanwhile
                if how is not None:
                    reading.add_metric([name, r.key, how], 1)
            if d.recommendation is not None:
                recommended.add_metric([name], d.recommendation)
            lo.add_metric([name], d.bounds.min_replicas)
            hi.add_metric([name], d.bounds.max_replicas)
            valid.add_metric([name], 1 if d.valid else 0)
        yield from (value, target, reading, recommended, lo, hi, valid)
        changes = CounterMetricFamily(
            "openeas_autoscaler_scale_events", "Count-changing decisions", labels=["service", "direction"]
        )
        for (name, direction), n in sorted(self.scaler.events.items()):
            changes.add_metric([name, direction], n)
        yield changes
