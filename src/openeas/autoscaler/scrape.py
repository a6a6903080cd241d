"""Collectors that read Prometheus text over HTTP: a named metric on every Ready replica's
``/metrics`` (:class:`ReplicaScraper`: ``vllm:num_requests_running``,
``llamacpp:requests_processing``, the test server's ``testserver_requests_in_flight``...), and the
parsing and reading the engine-load scrape shares (`parse_samples`, `fetch_text`).

A gauge with a histogram of seconds in :data:`~openeas.autoscaler.time_average.TIME_AVERAGES`
(``vllm:num_requests_running`` → ``vllm:request_inference_time_seconds``) is read with it, as a
time average by Little's law (:func:`~openeas.autoscaler.time_average.read`): a 1 s scrape of
the gauge alone misses requests of 20-100 ms.

The gateway's counters are not scraped: they come in its counters datagram
(:mod:`openeas.telemetry.gateway_stats`); its ``/metrics`` is for Prometheus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import aiohttp

from openeas.autoscaler.metrics import ServiceView, aggregate
from openeas.autoscaler.time_average import TIME_AVERAGES, BusyPoints, Reading, read
from openeas.autoscaler.windows import Gauge
from openeas.spec.autoscaling import MetricTarget

log = logging.getLogger("openeas.autoscaler")

# A replica's metric not read for this long is left out of the service's total, seconds.
REPLICA_STALE_S = 10.0


def parse_samples(text: str, wanted: set[str]) -> dict[str, list[tuple[str, float]]]:
    """Prometheus text → {metric name: [(labels text, value)]} for the names in ``wanted``."""
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            close = line.rfind("}")
            labels, rest = line[brace + 1 : close], line[close + 1 :].split()
        else:
            name, labels, rest = line[:space], "", line[space + 1 :].split()
        if name not in wanted or not rest:
            continue
        try:
            out.setdefault(name, []).append((labels, float(rest[0])))
        except ValueError:
            continue
    return out


async def fetch_text(session: aiohttp.ClientSession, url: str, timeout_s: float) -> str | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            if r.status != 200:
                return None
            return await r.text()
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None


def _scraped_names(gauges: set[str]) -> set[str]:
    """The gauges and the ``_sum`` and ``_count`` of their registered histograms."""
    out = set(gauges)
    for g in gauges:
        entry = TIME_AVERAGES.get(g)
        if entry is not None:
            out |= {entry.sum_name, entry.count_name}
    return out


class ReplicaScraper:
    """Custom metrics: each Ready replica's ``/metrics``, one gauge per (replica, metric) and,
    for a gauge with a registered histogram, its scrapes; a metric with several label sets (e.g.
    per model) is summed per replica."""

    kinds: tuple[str, ...] = ("custom",)

    def __init__(self, *, timeout_s: float = 1.0, horizon_s: float = 900.0) -> None:
        self.timeout_s = timeout_s
        self.horizon_s = horizon_s
        self.gauges: dict[tuple[str, str], Gauge] = {}  # (replica id, metric name)
        self.busy: dict[tuple[str, str], BusyPoints] = {}  # (replica id, gauge name): its histogram
        self._scrapes = 0  # collect() calls: the readings change only with them
        self._memo: tuple[tuple[object, ...], dict[str, Reading]] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def collect(self, services: Sequence[ServiceView], now: float) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        jobs = []
        for svc in services:
            names = {m.custom_metric for m in svc.policy.metrics if m.kind == "custom" and m.custom_metric}
            for r in svc.replicas if names else ():
                jobs.append(self._read(r.id, f"http://{r.host}:{r.port}/metrics", names, now))
        await asyncio.gather(*jobs)
        self._scrapes += 1
        live = {r.id for svc in services for r in svc.replicas}
        for key in [k for k in self.gauges if k[0] not in live]:
            del self.gauges[key]
        for key in [k for k in self.busy if k[0] not in live]:
            del self.busy[key]

    async def _read(self, rid: str, url: str, names: set[str], now: float) -> None:
        assert self._session is not None
        text = await fetch_text(self._session, url, self.timeout_s)
        if text is None:
            return
        found = parse_samples(text, _scraped_names(names))
        for name in names:
            if name in found:
                value = sum(v for _, v in found[name])
                self.gauges.setdefault((rid, name), Gauge(self.horizon_s)).add(now, value)
            entry = TIME_AVERAGES.get(name)
            if entry is not None and entry.sum_name in found and entry.count_name in found:
                busy = sum(v for _, v in found[entry.sum_name])
                done = sum(v for _, v in found[entry.count_name])
                self.busy.setdefault((rid, name), BusyPoints(self.horizon_s)).add(now, busy, done)

    def readings(
        self, service: ServiceView, metric: MetricTarget, window_s: float, now: float
    ) -> dict[str, Reading]:
        """Replica id → its reading of the metric over the window (replicas not read for
        :data:`REPLICA_STALE_S` are left out)."""
        name = metric.custom_metric or ""
        # total() and reading() over the same window in one decision: computed once
        key = (self._scrapes, service.name, tuple(r.id for r in service.replicas), name, window_s, now)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        out: dict[str, Reading] = {}
        for r in service.replicas:
            g, b = self.gauges.get((r.id, name)), self.busy.get((r.id, name))
            g_last, b_last = (g.last() if g else None), (b.last() if b else None)
            fresh_g = g if g_last is not None and now - g_last[0] <= REPLICA_STALE_S else None
            fresh_b = b if b_last is not None and now - b_last.t <= REPLICA_STALE_S else None
            reading = read(TIME_AVERAGES.get(name), name, fresh_g, fresh_b, window_s, now)
            if reading is not None:
                out[r.id] = reading
        self._memo = (key, out)
        return out

    def total(self, service: ServiceView, metric: MetricTarget, window_s: float, now: float) -> float | None:
        if not service.replicas:
            return 0.0  # no Ready replica carries any load
        per = {rid: x.value for rid, x in self.readings(service, metric, window_s, now).items()}
        return aggregate(per, len(service.replicas), metric.aggregate)

    def reading(self, service: ServiceView, metric: MetricTarget, window_s: float, now: float) -> str | None:
        """Where :meth:`total` took the metric from: the sources the replicas' readings used,
        e.g. ``rate(vllm:request_inference_time_seconds_sum)``; None without a reading."""
        sources = sorted({x.source for x in self.readings(service, metric, window_s, now).values()})
        return " + ".join(sources) or None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
