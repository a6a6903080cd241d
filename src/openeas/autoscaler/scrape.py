"""Collectors that read Prometheus text over HTTP: a named metric on every Ready replica's
``/metrics`` (:class:`ReplicaScraper`: ``vllm:num_requests_running``,
``llamacpp:requests_processing``, the test server's ``testserver_requests_in_flight``...), and the
parsing and reading the engine-load scrape shares (`parse_samples`, `fetch_text`).

The gateway's counters are not scraped: they come in its counters datagram
(:mod:`openeas.telemetry.gateway_stats`); its ``/metrics`` is for Prometheus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import aiohttp

from openeas.autoscaler.metrics import ServiceView, aggregate
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


class ReplicaScraper:
    """Custom metrics: each Ready replica's ``/metrics``, one gauge per (replica, metric); a
    metric with several label sets (e.g. per model) is summed per replica."""

    kinds: tuple[str, ...] = ("custom",)

    def __init__(self, *, timeout_s: float = 1.0, horizon_s: float = 900.0) -> None:
        self.timeout_s = timeout_s
        self.horizon_s = horizon_s
        self.gauges: dict[tuple[str, str], Gauge] = {}  # (replica id, metric name)
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
        live = {r.id for svc in services for r in svc.replicas}
        for key in [k for k in self.gauges if k[0] not in live]:
            del self.gauges[key]

    async def _read(self, rid: str, url: str, names: set[str], now: float) -> None:
        assert self._session is not None
        text = await fetch_text(self._session, url, self.timeout_s)
        if text is None:
            return
        found = parse_samples(text, names)
        for name in names:
            if name in found:
                value = sum(v for _, v in found[name])
                self.gauges.setdefault((rid, name), Gauge(self.horizon_s)).add(now, value)

    def total(self, service: ServiceView, metric: MetricTarget, window_s: float, now: float) -> float | None:
        if not service.replicas:
            return 0.0  # no Ready replica carries any load
        per: dict[str, float] = {}
        for r in service.replicas:
            g = self.gauges.get((r.id, metric.custom_metric or ""))
            last = g.last() if g is not None else None
            if g is None or last is None or now - last[0] > REPLICA_STALE_S:
                continue
            mean = g.mean(window_s, now)
            if mean is not None:
                per[r.id] = mean
        return aggregate(per, len(service.replicas), metric.aggregate)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
