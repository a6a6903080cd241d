"""The gateway's request counters between two scrapes of its ``/metrics``: per service, the
requests per second, the success rate and the p50/p99 latency (from the duration histogram's
bucket increases, interpolated within a bucket). Pure functions of two parsed scrapes and their times."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from openeas.autoscaler.scrape import label as _label
from openeas.autoscaler.scrape import parse_samples

_REQS = "openeas_gateway_requests_total"
_BUCKET = "openeas_gateway_request_duration_seconds_bucket"


@dataclass
class Scrape:
    """One scrape: per service, answered requests by status code and cumulative latency buckets."""

    time: float  # clock seconds of the scrape
    codes: dict[str, dict[str, float]] = field(default_factory=dict)  # service -> code -> count
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # service -> le (s) -> count


@dataclass(frozen=True)
class Window:
    """A service's traffic between two scrapes; None fields: no request in the window."""

    qps: float  # requests answered per second
    success: float | None  # share of answers that were not 5xx (0..1)
    p50_ms: float | None  # median latency, milliseconds (interpolated within its bucket)
    p99_ms: float | None


def parse(text: str, now: float) -> Scrape:
    """A gateway's Prometheus text as a Scrape taken at ``now``."""
    samples = parse_samples(text, {_REQS, _BUCKET})
    out = Scrape(now)
    for labels, value in samples.get(_REQS, []):
        svc, code = _label(labels, "service"), _label(labels, "code")
        if svc is not None and code is not None:
            out.codes.setdefault(svc, {})[code] = value
    for labels, value in samples.get(_BUCKET, []):
        svc, le = _label(labels, "service"), _label(labels, "le")
        if svc is not None and le is not None:
            out.buckets.setdefault(svc, {})[math.inf if le == "+Inf" else float(le)] = value
    return out


def _quantile(increases: dict[float, float], q: float) -> float | None:
    """Quantile ``q`` (seconds) of cumulative bucket ``increases``, interpolated linearly within
    the bucket that holds it (as Prometheus' ``histogram_quantile``: the first bucket starts at 0);
    the largest finite bound when it falls in +Inf; None without any observation."""
    total = increases.get(math.inf, max(increases.values(), default=0.0))
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    finite = [le for le in sorted(increases) if le != math.inf]
    for le in finite:
        count = increases[le]
        if count >= rank:
            inside = count - below
            return le if inside <= 0 else lower + (le - lower) * (rank - below) / inside
        lower, below = le, count
    return finite[-1] if finite else None


def window(prev: Scrape, cur: Scrape, service: str) -> Window:
    """``service``'s traffic between ``prev`` and ``cur``. A counter that went down (a gateway
    restart) counts from zero."""
    span = cur.time - prev.time
    before, after = prev.codes.get(service, {}), cur.codes.get(service, {})
    by_code = {c: _increase(before.get(c, 0.0), n) for c, n in after.items()}
    answered = sum(by_code.values())
    errors = sum(n for c, n in by_code.items() if c.startswith("5"))
    b0, b1 = prev.buckets.get(service, {}), cur.buckets.get(service, {})
    inc = {le: _increase(b0.get(le, 0.0), n) for le, n in b1.items()}
    p50, p99 = _quantile(inc, 0.5), _quantile(inc, 0.99)
    return Window(
        qps=answered / span if span > 0 else 0.0,
        success=(answered - errors) / answered if answered else None,
        p50_ms=p50 * 1000 if p50 is not None else None,
        p99_ms=p99 * 1000 if p99 is not None else None,
    )


def _increase(before: float, after: float) -> float:
    return after - before if after >= before else after
