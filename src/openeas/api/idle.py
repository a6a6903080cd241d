"""The idle-spend watch: the alarm of openeas.cost.idle, fed by the autoscaler's decisions.

Every :data:`CHECK_INTERVAL_S` it reads each service's last autoscaler decision (current
replicas; the recommendation, what the metrics alone ask for; none while the decision is not
valid: "no data" is not zero), prices the service by the server's catalog and feeds
:func:`openeas.cost.idle.observe`. When an idle episode has held 3 hours it records one Warning
event ``IdleSpend`` naming what the idle capacity costs a month; while it lasts, ``ls`` and
``describe`` carry it (``idle`` in their answers) and ``/metrics`` has
``openeas_idle_replicas{service}`` and ``openeas_idle_monthly_cost{service,currency}``.
Episodes live in memory: a restart of the server starts them over.

While the alarm is on, each of those also says what the simulator finds a better min/max would
save (:func:`openeas.autoscaler.whatif.better_bounds`): the service's last 24 h of hourly request
counts (the meter's ``request_usage``), its measured cold starts and its newest stress report's
saturation point; ``openeas_idle_saving_monthly{service,currency}`` carries the figure. Without one
of those inputs the line says which is missing (no figure is defaulted). The what-if is computed
once per service, version and UTC hour (the counts change hourly).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from openeas.autoscaler.whatif import WINDOW_H, Capacity, WhatIf, better_bounds
from openeas.cost import Catalog, map_spec
from openeas.cost.idle import Idle, IdleState, observe
from openeas.errors import SpecError
from openeas.kernel.clock import Clock
from openeas.spec.models import ServiceSpec
from openeas.store import Store, stress_reports

log = logging.getLogger("openeas.idle")
CHECK_INTERVAL_S = 60.0  # seconds between two looks at the decisions


class IdleWatch(Collector):
    def __init__(
        self,
        store: Store,
        status: Callable[[str], dict[str, Any] | None],
        catalog: Callable[[], Catalog],
        clock: Clock,
        *,
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self.store = store
        self.status = status  # the autoscaler's view of a service (AutoscalerLoop.status)
        self.catalog = catalog
        self.clock = clock
        self.interval_s = interval_s
        self.states: dict[str, IdleState] = {}
        self.found: dict[str, Idle] = {}
        self.whatifs: dict[str, tuple[tuple[int, int], WhatIf]] = {}  # (version, hour) → what-if

    def tick(self, now: float) -> None:
        """One look at every service's last decision (``now``: epoch seconds)."""
        try:
            catalog: Catalog | None = self.catalog()
        except SpecError:
            catalog = None  # an unreadable catalog: the alarm still fires, unpriced
        names = set()
        for svc in self.store.list_services():
            names.add(svc.name)
            decision = (self.status(svc.name) or {}).get("decision")
            if not decision:
                continue
            needed = decision.get("recommendation") if decision.get("valid") else None
            price, currency = None, ""
            spec = self.store.version_spec(svc.name, svc.current_version)
            if catalog is not None:
                pricing = map_spec(spec, catalog)
                price, currency = pricing.per_hour, pricing.currency
            state, idle, fire = observe(
                self.states.get(svc.name, IdleState()),
                now,
                int(decision["current_replicas"]),
                needed,
                price_per_hour=price,
                currency=currency,
            )
            self.states[svc.name] = state
            if idle is None:
                self.found.pop(svc.name, None)
                continue
            what = self.whatif(svc.name, svc.current_version, spec, now, price, currency)
            idle = replace(idle, saving_per_month=what.per_month, saving=what.message())
            self.found[svc.name] = idle
            if fire:
                self.store.record_event(svc.name, "IdleSpend", idle.message(now), type="Warning")
        for gone in set(self.states) - names:
            self.states.pop(gone, None)
            self.found.pop(gone, None)
            self.whatifs.pop(gone, None)

    def whatif(
        self, name: str, version: int, spec: ServiceSpec, now: float, price: float | None, currency: str
    ) -> WhatIf:
        """What a better min/max would save (cached per version and UTC hour)."""
        key = (version, int(now // 3600))
        cached = self.whatifs.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        hourly = {
            r.hour: r.requests
            for r in self.store.request_usage(service=name, since=now - (WINDOW_H + 1) * 3600)
        }
        cold = [
            float(r.spans["total_s"])
            for r in self.store.cold_starts(name)
            if r.spans.get("total_s") is not None
        ]
        what = better_bounds(
            spec, hourly, now, cold_starts_s=cold, capacity=measured_capacity(self.store, name),
            price_per_hour=price, currency=currency,
        )  # fmt: skip
        self.whatifs[name] = (key, what)
        return what

    def view(self, name: str) -> dict[str, Any] | None:
        idle = self.found.get(name)
        return None if idle is None else idle.as_dict(self.clock.wall())

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:  # in a thread: a what-if replays a day through the simulator
                await asyncio.to_thread(self.tick, self.clock.wall())
            except Exception:  # one bad look must not end the watch
                log.exception("idle-spend watch")
            if await self.clock.sleep(self.interval_s, stop):
                return

    def collect(self) -> Iterator[Metric]:
        replicas = GaugeMetricFamily(
            "openeas_idle_replicas",
            "Replicas paid to idle: running minus what the load needs, while the idle-spend alarm is on",
            labels=["service"],
        )
        cost = GaugeMetricFamily(
            "openeas_idle_monthly_cost",
            "What the idle replicas cost a month (720 h) at the catalog's price, while the alarm is on",
            labels=["service", "currency"],
        )
        saving = GaugeMetricFamily(
            "openeas_idle_saving_monthly",
            "What the simulator says a better min/max would save a month, while the alarm is on "
            "(absent when an input is missing: see the service's idle line)",
            labels=["service", "currency"],
        )
        for name, idle in sorted(self.found.copy().items()):  # copy(): atomic; tick runs in a thread
            replicas.add_metric([name], idle.idle_replicas)
            if idle.monthly_cost is not None:
                cost.add_metric([name, idle.currency], idle.monthly_cost)
            if idle.saving_per_month is not None:
                saving.add_metric([name, idle.currency], idle.saving_per_month)
        yield replicas
        yield cost
        yield saving


def measured_capacity(store: Store, name: str) -> Capacity | None:
    """The saturation point of the service's newest stress report that found one."""
    for r in stress_reports.listing(store, target=name):  # newest first
        qps, conc = r.get("qps_per_replica"), r.get("concurrency_per_replica")
        if r.get("saturation_found") and qps and conc:
            return Capacity(float(qps), float(conc))
    return None
