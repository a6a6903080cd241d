"""The ``backlog`` metric: an async service's queued + in-flight requests (openeas.queue).

Collection only: each scrape period the queue backend is asked (off the event loop) for the
backlog of the services whose policy names ``backlog``; the samples go into a time window, and
the policy divides the window's mean by the target per replica like any other metric. A service
whose queue cannot be read has no data (the policy then moves nothing), never a zero.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from openeas.autoscaler.metrics import ServiceView
from openeas.autoscaler.windows import Gauge
from openeas.queue.scale import BacklogSource
from openeas.spec.autoscaling import MetricTarget

log = logging.getLogger("openeas.autoscaler")


class QueueBacklog:
    kinds: tuple[str, ...] = ("backlog",)

    def __init__(self, source: BacklogSource, horizon_s: float = 900.0) -> None:
        self.source = source
        self.horizon_s = horizon_s
        self.windows: dict[str, Gauge] = {}  # service → queued + in flight

    async def collect(self, services: Sequence[ServiceView], now: float) -> None:
        names = [s.name for s in services if any(m.kind == "backlog" for m in s.policy.metrics)]
        if not names:
            return
        try:
            found = await asyncio.to_thread(self.source.backlogs, names)
        except Exception:  # a queue that cannot be read is no data, not an empty queue
            log.warning("cannot read the queue backlog of %s", names, exc_info=True)
            return
        for name, backlog in found.items():
            self.windows.setdefault(name, Gauge(self.horizon_s)).add(now, float(backlog.total))
        for name in [n for n in self.windows if n not in names]:
            del self.windows[name]

    def total(self, service: ServiceView, metric: MetricTarget, window_s: float, now: float) -> float | None:
        window = self.windows.get(service.name)
        return window.mean(window_s, now) if window is not None else None
