"""What a better min/max would save: the idle-spend alarm's what-if (pure; takes ``now``).

From a service's recent hourly request counts (the meter's ``request_usage`` rows) it builds a
trace of the last :data:`WINDOW_H` whole hours before ``now`` (each hour's requests spread evenly
over its seconds; an hour without a row had no request) and replays it through the simulator
(:func:`openeas.autoscaler.simulate.simulate`, the server's own ``decide()``) with the spec's
bounds and with a few candidate pairs: min replicas 1, ⌈min/4⌉ and ⌈min/2⌉ (those below the
current min), the max unchanged (a fixed replica count: min = max = the candidate). A candidate
counts only when it serves the trace as well: no more requests held (+0.1 pt), no more than 1 pt
more requests meeting a cold start, and a p99 estimate within 10% (+1 ms) of the current bounds'.
The saving of the best one: (the current cost - its cost) over the window, x 720 h / the window's
hours. Nothing is defaulted: without the catalog price, a measured cold start, a capacity (a
stress report's saturation point: req/s and concurrency per replica, whose ratio is the request
duration) or any request count in the window, the answer says what is missing instead of a number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from openeas.autoscaler.simulate import Result, policy_of, simulate
from openeas.autoscaler.trace import Trace
from openeas.errors import SpecError
from openeas.spec.models import ServiceSpec

WINDOW_H = 24  # whole hours of request counts replayed
HOUR_S = 3600
HOURS_PER_MONTH = 720.0
HELD_SLACK = 0.001  # share of requests: a candidate may hold at most 0.1 pt more
COLD_SLACK = 0.01  # share of requests: at most 1 pt more may meet a cold start
P99_SLACK = 0.10  # a candidate's p99 estimate at most 10% (+ 1 ms) above the current bounds'


@dataclass(frozen=True)
class Capacity:
    """A stress report's saturation point, per replica."""

    qps: float  # requests/s
    concurrency: float  # requests in flight

    @property
    def duration_s(self) -> float:
        """Mean seconds a request takes at saturation (Little's law: concurrency / qps)."""
        return self.concurrency / self.qps


@dataclass(frozen=True)
class WhatIf:
    """The best candidate bounds and their monthly saving, or what is missing to say."""

    min_replicas: int | None = None
    max_replicas: int | None = None
    per_month: float | None = None  # currency units saved a month; 0.0: no candidate saves
    currency: str = ""
    window_h: int = WINDOW_H
    missing: tuple[str, ...] = ()

    def message(self) -> str:
        if self.missing:
            return "what a better min/max would save is unknown: no " + ", no ".join(self.missing)
        if not self.per_month:
            return f"the simulator finds no min/max that saves on the last {self.window_h} h of requests"
        return (
            f"the simulator says min {self.min_replicas} / max {self.max_replicas} would save "
            f"{self.per_month:,.2f} {self.currency}/month (the last {self.window_h} h of requests)"
        )


def hourly_trace(hourly: Mapping[float, int], now: float, window_h: int = WINDOW_H) -> tuple[Trace, int]:
    """The trace of the ``window_h`` whole hours before ``now``'s hour (``hourly``: the hour's
    start, epoch seconds → requests), and how many requests it holds. Busy: 0 (set by the caller)."""
    end = int(now // HOUR_S) * HOUR_S
    start = end - window_h * HOUR_S
    counts = np.array([float(hourly.get(float(start + h * HOUR_S), 0)) for h in range(window_h)])
    arrivals = np.repeat(counts / HOUR_S, HOUR_S)
    return Trace(float(start), arrivals, np.zeros_like(arrivals)), int(counts.sum())


def candidates(min_replicas: int, max_replicas: int, scales: bool) -> list[tuple[int, int]]:
    """(min, max) pairs below the current min; a fixed count (``scales`` False) keeps min = max."""
    mins = sorted({1, math.ceil(min_replicas / 4), math.ceil(min_replicas / 2)} - {min_replicas})
    return [(m, max_replicas if scales else m) for m in mins if 1 <= m < min_replicas]


def _as_good(c: Result, base: Result) -> bool:
    return (
        c.held_share <= base.held_share + HELD_SLACK
        and c.cold_share <= base.cold_share + COLD_SLACK
        and c.p99_s <= base.p99_s * (1 + P99_SLACK) + 0.001
    )


def better_bounds(
    spec: ServiceSpec,
    hourly: Mapping[float, int],
    now: float,
    *,
    cold_starts_s: list[float],
    capacity: Capacity | None,
    price_per_hour: float | None,
    currency: str,
    window_h: int = WINDOW_H,
) -> WhatIf:
    """The best saving a candidate min/max finds on the last ``window_h`` hours of ``hourly``."""
    trace, requests = hourly_trace(hourly, now, window_h)
    missing = []
    if price_per_hour is None:
        missing.append("catalog price for the service")
    if capacity is None:
        missing.append("capacity figure (a stress report with a saturation point: openeas stress)")
    if not cold_starts_s:
        missing.append("measured cold start")
    if requests == 0:
        missing.append(f"request counts in the last {window_h} h (the meter's request_usage)")
    try:
        policy = policy_of(spec)
    except SpecError as e:
        missing.append("replayable policy (" + "; ".join(e.errors) + ")")
        policy = None
    if missing or policy is None or capacity is None:
        return WhatIf(currency=currency, window_h=window_h, missing=tuple(missing))
    trace = Trace(trace.start, trace.arrivals, trace.arrivals * capacity.duration_s)
    qps = capacity.qps

    def run(bounds: tuple[int, int] | None) -> Result:
        return simulate(
            spec, trace, cold_starts_s=cold_starts_s, capacity_qps=qps,
            price_per_hour=price_per_hour, currency=currency, bounds=bounds,
        )  # fmt: skip

    base = run(None)
    best = WhatIf(policy.min_replicas, policy.max_replicas, 0.0, currency, window_h)
    for lo, hi in candidates(policy.min_replicas, policy.max_replicas, bool(policy.metrics)):
        r = run((lo, hi))
        if base.cost is None or r.cost is None or not _as_good(r, base):
            continue
        saving = (base.cost - r.cost) * HOURS_PER_MONTH / window_h
        if saving > (best.per_month or 0.0):
            best = WhatIf(lo, hi, saving, currency, window_h)
    return best
