"""A service's answers between two readings of the gateways' counters (the stats datagram,
summed by `GatewayStats.answers`): the requests per second, the success rate and the p50/p99
latency (from the duration histogram's bucket increases, interpolated within a bucket). Pure
functions of two readings and their times."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from openeas.telemetry.answers import EMPTY, MemberSample, minus
from openeas.telemetry.latency import SERVICE_LATENCY_BUCKETS_S, quantile


@dataclass(frozen=True)
class Reading:
    """Every service's answers, summed over the gateways, at one instant."""

    time: float  # clock seconds of the reading
    answers: Mapping[str, MemberSample] = field(default_factory=dict)  # cumulative, by service


@dataclass(frozen=True)
class Window:
    """A service's traffic between two readings; None fields: no request in the window."""

    qps: float  # requests answered per second
    success: float | None  # share of answers that were not 5xx (0..1)
    p50_ms: float | None  # median latency, milliseconds (interpolated within its bucket)
    p99_ms: float | None


def window(
    prev: Reading, cur: Reading, service: str, bounds: Sequence[float] = SERVICE_LATENCY_BUCKETS_S
) -> Window:
    """``service``'s traffic between ``prev`` and ``cur`` (buckets over ``bounds``). A counter that
    went down (a reset) counts from zero."""
    span = cur.time - prev.time
    inc = minus(cur.answers.get(service, EMPTY), prev.answers.get(service, EMPTY))
    answered = sum(inc.by_code.values())
    errors = sum(n for c, n in inc.by_code.items() if c.startswith("5"))
    buckets = (inc.buckets + (0,) * len(bounds))[: len(bounds)]
    p50, p99 = quantile(buckets, 0.5, bounds), quantile(buckets, 0.99, bounds)
    return Window(
        qps=answered / span if span > 0 else 0.0,
        success=(answered - errors) / answered if answered else None,
        p50_ms=p50 * 1000 if p50 is not None else None,
        p99_ms=p99 * 1000 if p99 is not None else None,
    )
