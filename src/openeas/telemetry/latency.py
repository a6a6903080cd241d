"""The gateway's latency histograms: their bucket layouts (a service's, a service group
member's), shared by the gateway (which counts into them) and the control plane (which reads
quantiles, success ratios and a step's window back from the gateway's counters). Pure
arithmetic, standard library only."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

# Upper bounds (seconds) of the group latency histogram, finer than the per-service one: a p99 SLO
# is checked against it (about 1.5x apart from 1 ms to 60 s; the last one is +Inf).
GROUP_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
    math.inf,
)  # fmt: skip

# Upper bounds (seconds) of a service's latency histogram (/metrics'
# openeas_gateway_request_duration_seconds, the stats datagram's answers); the last one is +Inf.
SERVICE_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, math.inf,
)  # fmt: skip


def quantile(
    buckets: Sequence[int], q: float, bounds: Sequence[float] = GROUP_LATENCY_BUCKETS_S
) -> float | None:
    """The ``q`` quantile (0..1) in seconds of a non-cumulative histogram over ``bounds`` (upper
    bounds, the last +Inf), linear within a bucket from the bound below (0 for the first, as
    Prometheus's ``histogram_quantile``; the +Inf bucket reads as its lower bound); None when it
    is empty."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for upper, n in zip(bounds, buckets, strict=True):
        if n and seen + n >= rank:
            if upper == math.inf:
                return lower
            return lower + (upper - lower) * max(0.0, rank - seen) / n
        seen += n
        lower = upper if upper != math.inf else lower
    return lower


def success_ratio(by_code: Mapping[str, int] | Mapping[int, int]) -> float | None:
    """Answers below 500 over all answers (a 4xx is the client's doing); None when there were none."""
    total = sum(by_code.values())
    if total == 0:
        return None
    ok = sum(n for code, n in by_code.items() if int(code) < 500)
    return ok / total


def bucket_delta(new: Iterable[int], old: Iterable[int] | None) -> list[int]:
    """Per-bucket increase between two cumulative-since-start snapshots (a reset counts from 0)."""
    new_l = list(new)
    if old is None:
        return new_l
    old_l = list(old)
    if len(old_l) != len(new_l) or any(n < o for n, o in zip(new_l, old_l, strict=True)):
        return new_l
    return [n - o for n, o in zip(new_l, old_l, strict=True)]
