"""The control plane's cost API: ``/api/v1/cost/...`` (docs/cost.md).

- ``POST /api/v1/cost/estimate`` ``{"spec": {...}, "traffic": {...}}``: the monthly estimate of a
  spec (traffic optional), priced by the server's catalog;
- ``GET /api/v1/services/{name}/cost``: the same for a deployed service's current version;
- ``GET /api/v1/cost/catalog``: the catalog the server prices by;
- ``GET /api/v1/services/{name}/trace?seconds=N``: the gateways' own counts of a service over the
  last N seconds (at most the 900 they keep) as a trace CSV for ``openeas simulate``;
- ``GET /api/v1/cost/report?by=service|day|month[&service=NAME][&since=EPOCH]``: the meter, what
  replicas and requests have cost so far (openeas.cost.meter), also on ``/metrics`` as
  ``openeas_cost_replica_seconds``, ``openeas_cost_requests`` and ``openeas_cost_spend``.

The catalog is ``openeas server --catalog FILE`` (``OPENEAS_CATALOG``), else the shipped one.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import PlainTextResponse
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from openeas.autoscaler.trace import Trace, write_trace
from openeas.cost import Catalog, estimate, load_catalog, parse_traffic
from openeas.cost.meter import BY_CHOICES, Report, Requests, Usage, meter
from openeas.errors import NotFound, SpecError
from openeas.spec import parse_spec
from openeas.spec.load import parse_json
from openeas.spec.models import ServiceSpec
from openeas.store import Store

ENV_CATALOG = "OPENEAS_CATALOG"  # set by `openeas server --catalog FILE`
TRACE_MAX_S = 900  # seconds a trace export covers at most: the gateway counters' horizon
TRACE_DEFAULT_S = 900
MAX_BODY_BYTES = 16 * 1024 * 1024


def server_catalog() -> Catalog:
    """The catalog this server prices by (read on each call: edits apply without a restart)."""
    return load_catalog(os.environ.get(ENV_CATALOG) or None)


def cost_of(spec: ServiceSpec) -> dict[str, Any]:
    """The baseline estimate of a spec, for dry-run and describe; an unreadable catalog is named."""
    try:
        return estimate(spec, server_catalog()).as_dict()
    except SpecError as exc:
        return {"error": "; ".join(exc.errors)}


def metered(
    store: Store, now: float, *, by: Any = "service", service: str | None = None, since: float | None = None
) -> Report:
    """The meter over the store's usage record, priced by the server's catalog."""
    rows = store.usage(service=service, since=since)
    usages = [
        Usage(
            r.service, r.replica, r.started_at, r.ended_at, r.resources or {}, r.cold_starts, r.bytes_fetched
        )
        for r in rows
    ]
    requests = [
        Requests(q.service, q.hour, q.requests) for q in store.request_usage(service=service, since=since)
    ]
    return meter(usages, server_catalog(), now, by=by, since=since, requests=requests)


class MeterCollector(Collector):
    """``/metrics``: replica-seconds by service and instance type, and the spend, since metering
    began (the store's record; read at scrape time, so right after a restart)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            report = metered(self.store, time.time())
        except SpecError:  # an unreadable catalog: the API names it; the scrape goes on
            return
        seconds = GaugeMetricFamily(
            "openeas_cost_replica_seconds",
            "Billed replica-seconds (every phase but Stopped) by service and instance type, "
            "since metering began",
            labels=["service", "instance_type"],
        )
        spend = GaugeMetricFamily(
            "openeas_cost_spend",
            "Compute, storage reads and request fees billed so far by service, in the catalog's currency",
            labels=["service", "currency"],
        )
        requests = GaugeMetricFamily(
            "openeas_cost_requests",
            "Requests received by service (the gateways' counts), since metering began",
            labels=["service"],
        )
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        for r in report.rows:
            if r["replica_seconds"] or r["instance_type"]:
                seconds.add_metric([r["key"], r["instance_type"] or "unpriced"], r["replica_seconds"])
            totals[r["key"]] = totals.get(r["key"], 0.0) + (r["total"] or 0.0)
            counts[r["key"]] = counts.get(r["key"], 0) + r["requests"]
        for name, n in sorted(counts.items()):
            requests.add_metric([name], n)
        for name, amount in sorted(totals.items()):
            spend.add_metric([name, report.currency], amount)
        yield seconds
        yield spend
        yield requests


def gateway_trace(cp: Any, name: str, seconds: int) -> str:
    """The last ``seconds`` whole seconds of the gateways' counts of ``name`` as a trace CSV:
    requests received in each second and the mean time in flight (request-seconds / requests)."""
    stats = cp.gateway_stats
    if stats is None or stats.last_seen(name) is None:
        raise NotFound(f"{name}: no gateway reported it within the last {TRACE_MAX_S} s: no trace")
    wall_now, now = time.time(), stats.clock()
    wall_start = math.floor(wall_now) - seconds
    arrivals, busy = stats.per_second(name, now - (wall_now - wall_start), seconds)
    buf = io.StringIO()
    write_trace(Trace(float(wall_start), np.array(arrivals, dtype=float), np.array(busy)), buf)
    return buf.getvalue()


def add_cost_routes(app: FastAPI, cp: Any, auth: list[Any]) -> None:
    try:
        cp.metrics.add_collector(MeterCollector(cp.store))
    except ValueError:  # a second app over the same control plane: its collector is there already
        pass

    @app.post("/api/v1/cost/estimate", dependencies=auth, tags=["cost"])
    async def cost_estimate(request: Request) -> dict[str, Any]:
        """The monthly estimate of ``spec`` under ``traffic`` (each line with its arithmetic)."""
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise SpecError([f"body: larger than {MAX_BODY_BYTES} bytes (16 MiB)"])
        try:
            data = parse_json(body)
        except ValueError:
            raise SpecError(["body: not valid JSON"]) from None
        if not isinstance(data, dict) or not isinstance(data.get("spec"), dict):
            raise SpecError(['spec: required, the service spec ({"spec": {...}, "traffic": {...}})'])
        errors: list[str] = []
        spec = traffic = None
        try:
            spec = parse_spec(data["spec"])
        except SpecError as exc:
            errors += exc.errors
        if data.get("traffic") is not None:
            try:
                traffic = parse_traffic(data["traffic"])
            except SpecError as exc:
                errors += exc.errors
        if errors or spec is None:
            raise SpecError(errors)
        return estimate(spec, server_catalog(), traffic).as_dict()

    @app.get("/api/v1/services/{name}/cost", dependencies=auth, tags=["cost"])
    def service_cost(name: str) -> dict[str, Any]:
        """The baseline estimate of a service's current version, and how its price was mapped."""
        row = cp.store.get_service(name)
        spec = cp.store.version_spec(name, row.current_version)
        return {"name": name, **estimate(spec, server_catalog()).as_dict()}

    @app.get("/api/v1/cost/report", dependencies=auth, tags=["cost"])
    def cost_report(
        by: str = "service", service: str | None = None, since: float | None = Query(default=None, ge=0)
    ) -> dict[str, Any]:
        """What replicas have cost: replica-seconds by instance type, cold starts and their reads."""
        if by not in BY_CHOICES:
            raise SpecError([f"by: {by!r} is not one of {', '.join(BY_CHOICES)}"])
        return metered(cp.store, time.time(), by=by, service=service, since=since).as_dict()

    @app.get(
        "/api/v1/services/{name}/trace", dependencies=auth, tags=["cost"], response_class=PlainTextResponse
    )
    async def service_trace(
        name: str,
        seconds: int = Query(TRACE_DEFAULT_S, ge=1, le=TRACE_MAX_S, description="the last N seconds"),
    ) -> PlainTextResponse:
        """The gateways' own counts of a service as a trace CSV (timestamp,count,duration_s) for
        ``openeas simulate``; on the event loop, where the counters are kept."""
        await asyncio.to_thread(cp.store.get_service, name)  # an unknown service is a 404
        return PlainTextResponse(gateway_trace(cp, name, seconds), media_type="text/csv")

    @app.get("/api/v1/cost/catalog", dependencies=auth, tags=["cost"])
    def catalog() -> dict[str, Any]:
        """The catalog the server prices by."""
        return server_catalog().model_dump()
