"""The what-if simulator: a request trace replayed through the server's own ``decide()``.

``simulate(spec, trace, …)`` steps virtual time over the trace at 1 s resolution. Every
``decide_every_s`` it feeds :func:`openeas.autoscaler.policy.decide` (the function the live
autoscaler calls) what the gateway would report: ``qps`` and ``concurrent_requests`` means over
the policy's metric and panic windows, the arrival rate, requests in flight and held. A scale-up
adds replicas that are billed at once and Ready after a cold start drawn from the given
distribution (cycled in order: deterministic); a scale-down removes starting replicas first.

Per second it counts what the trace met: requests arriving with no Ready replica are **held**
(they wait for the first Ready one); requests arriving while the demand exceeds what the Ready
replicas take (``capacity_qps`` each) and a replica is starting **met a cold start**. The p99
estimate: each second's requests take their duration, stretched by the overload factor (demand /
Ready capacity, when above 1), plus the hold for held ones; the 99th percentile of that, weighted
by requests. Cost: billed replica-seconds x the catalog's hourly price of the spec.

Only the traffic metrics (``qps``, ``concurrent_requests``) can be replayed from a trace; a policy
on another metric is refused by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from openeas.autoscaler.policy import DecisionContext, Observation, PolicyState, Traffic, decide
from openeas.errors import SpecError
from openeas.spec.autoscaling import AutoscalingPolicy
from openeas.spec.models import ServiceSpec

SIMULATED_METRICS = ("qps", "concurrent_requests")
DECIDE_EVERY_S = 15.0  # seconds of virtual time between two decisions (the live tick is 0.1 s; a
# decision scans its stabilization history, so a month at 1 s per decision would take minutes)


@dataclass(frozen=True)
class Trace:
    """Requests per second from ``start`` (epoch seconds, for cron rules)."""

    start: float
    arrivals: np.ndarray  # requests starting in each second (float64)
    busy: np.ndarray  # request-seconds starting in each second: sum of their durations

    @property
    def seconds(self) -> int:
        return len(self.arrivals)


@dataclass(frozen=True)
class Result:
    seconds: int
    requests: float
    replica_seconds: float
    cost: float | None
    currency: str
    held_share: float  # of requests
    cold_share: float  # of requests
    p99_s: float
    scale_events: int
    peak_replicas: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "requests": round(self.requests),
            "replica_hours": round(self.replica_seconds / 3600, 2),
            "cost": None if self.cost is None else round(self.cost, 2),
            "currency": self.currency,
            "held_share": round(self.held_share, 6),
            "cold_start_share": round(self.cold_share, 6),
            "p99_s": round(self.p99_s, 3),
            "scale_events": self.scale_events,
            "peak_replicas": self.peak_replicas,
        }


def policy_of(spec: ServiceSpec) -> AutoscalingPolicy:
    policy = spec.autoscaling_policy()
    if policy is None:  # a fixed count: a policy whose bounds pin it
        n = spec.metadata.instance
        return AutoscalingPolicy(min_replicas=n, max_replicas=n, metrics=(), source="autoscaling")
    bad = [m.key for m in policy.metrics if m.kind not in SIMULATED_METRICS]
    if bad:
        raise SpecError(
            [
                f"autoscaling metric {k}: not replayable from a trace (only {', '.join(SIMULATED_METRICS)})"
                for k in bad
            ]
        )
    return policy


def _window(cum: np.ndarray, t: int, span_s: float) -> float:
    """Mean per second over the ``span_s`` seconds before ``t`` (cum: a cumulative sum, 0 first)."""
    w = max(1, int(span_s))
    lo = max(0, t - w)
    return float(cum[t] - cum[lo]) / max(1, t - lo)


def simulate(
    spec: ServiceSpec,
    trace: Trace,
    *,
    cold_starts_s: list[float],
    capacity_qps: float,
    price_per_hour: float | None,
    currency: str = "",
    decide_every_s: float = DECIDE_EVERY_S,
) -> Result:
    errors = []
    if not cold_starts_s or any(c < 0 for c in cold_starts_s):
        errors.append("cold starts: at least one duration ≥ 0 s is needed")
    if capacity_qps <= 0:
        errors.append(f"capacity: {capacity_qps:g} requests/s per replica; must be > 0")
    if decide_every_s < 1:
        errors.append(f"decide_every_s: {decide_every_s:g}; must be ≥ 1 s (the trace's resolution)")
    if errors:
        raise SpecError(errors)
    policy = policy_of(spec)
    n = trace.seconds
    arrivals, busy = trace.arrivals, trace.busy
    cum_a = np.concatenate(([0.0], np.cumsum(arrivals)))
    cum_b = np.concatenate(([0.0], np.cumsum(busy)))
    billed_d = np.zeros(n + 1)  # +1 at a replica's creation, -1 at its removal
    ready_d = np.zeros(n + 1)  # +1 when it is Ready, -1 at its removal (if it was)
    live: list[list[int]] = []  # [created, ready_at] of each replica
    starts = 0
    state = PolicyState()
    current = policy.clamp(spec.metadata.instance)
    for _ in range(current):  # the deploy's replicas: Ready at the start, as a running service's
        live.append([0, 0])
    events, peak = 0, current
    step = int(decide_every_s)
    mw, pw = policy.metric_window_s, policy.panic_window_s
    for t in range(0, n, step):
        n_ready = sum(1 for r in live if r[1] <= t)
        rate, inflight = _window(cum_a, t, mw), _window(cum_b, t, mw)
        obs = {
            "qps": Observation(rate, _window(cum_a, t, pw)),
            "concurrent_requests": Observation(inflight, _window(cum_b, t, pw)),
        }
        recent = float(cum_a[t] - cum_a[max(0, t - step)])
        traffic = Traffic(rate, inflight, int(recent) if n_ready == 0 else 0)
        ctx = DecisionContext(
            policy, float(t), trace.start + t, current, n_ready, obs if t > 0 else {}, traffic, state
        )
        decision, state = decide(ctx)
        want = decision.desired
        if want > current:
            for _ in range(want - current):
                live.append([t, t + math.ceil(cold_starts_s[starts % len(cold_starts_s)])])
                starts += 1
        elif want < current:
            live.sort(key=lambda r: r[1], reverse=True)  # the latest to be Ready (starting ones) go first
            for created, ready_at in live[: current - want]:
                _close(billed_d, ready_d, created, ready_at, t, n)
            del live[: current - want]
        if want != current:
            events += 1
        current = want
        peak = max(peak, current)
    for created, ready_at in live:
        _close(billed_d, ready_d, created, ready_at, n, n)
    billed = np.cumsum(billed_d)[:n]
    ready = np.cumsum(ready_d)[:n]
    return _account(trace, billed, ready, capacity_qps, price_per_hour, currency, events, peak)


def _close(billed_d: np.ndarray, ready_d: np.ndarray, created: int, ready_at: int, end: int, n: int) -> None:
    """Record a replica billed over [created, end) and Ready over [ready_at, end)."""
    billed_d[created] += 1
    billed_d[min(end, n)] -= 1
    if ready_at < end:
        ready_d[min(ready_at, n)] += 1
        ready_d[min(end, n)] -= 1


def _account(
    trace: Trace,
    billed: np.ndarray,
    ready: np.ndarray,
    capacity_qps: float,
    price_per_hour: float | None,
    currency: str,
    events: int,
    peak: int,
) -> Result:
    arrivals = trace.arrivals
    total = float(arrivals.sum())
    mean_d = np.divide(trace.busy, arrivals, out=np.zeros_like(arrivals), where=arrivals > 0)
    cap = ready * capacity_qps
    overload = np.divide(arrivals, cap, out=np.ones_like(arrivals), where=cap > 0)
    latency = mean_d * np.maximum(1.0, overload)
    held = (ready == 0) & (arrivals > 0)
    if held.any():  # the wait: until the next second with a Ready replica
        idx = np.arange(len(ready))
        nxt = np.where(ready > 0, idx, len(ready))
        nxt = np.minimum.accumulate(nxt[::-1])[::-1]
        latency = latency + np.where(held, nxt - idx, 0)
    cold = (~held) & (arrivals > cap) & (billed > ready)
    replica_seconds = float(billed.sum())
    return Result(
        seconds=trace.seconds,
        requests=total,
        replica_seconds=replica_seconds,
        cost=None if price_per_hour is None else replica_seconds / 3600 * price_per_hour,
        currency=currency,
        held_share=float(arrivals[held].sum()) / total if total else 0.0,
        cold_share=float(arrivals[cold].sum()) / total if total else 0.0,
        p99_s=_weighted_p99(latency, arrivals),
        scale_events=events,
        peak_replicas=peak,
    )


def _weighted_p99(values: np.ndarray, weights: np.ndarray) -> float:
    mask = weights > 0
    if not mask.any():
        return 0.0
    v, w = values[mask], weights[mask]
    order = np.argsort(v)
    cw = np.cumsum(w[order])
    i = int(np.searchsorted(cw, 0.99 * cw[-1]))
    return float(v[order][min(i, len(v) - 1)])


def load_trace(path: str) -> Trace:
    """The trace CSV (docs/simulate.md): a header, then ``timestamp,count,duration_s`` rows;
    ``timestamp`` in epoch seconds (or seconds from 0), ``count`` requests starting in that second
    (default 1), ``duration_s`` the mean seconds each takes."""
    import csv

    times: list[float] = []
    counts: list[float] = []
    durations: list[float] = []
    errors: list[str] = []
    with open(path, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            try:
                times.append(float(row["timestamp"]))
                counts.append(float(row.get("count") or 1))
                durations.append(float(row["duration_s"]))
            except (KeyError, TypeError, ValueError) as exc:
                errors.append(f"{path} line {i}: timestamp and duration_s must be numbers ({exc})")
                if len(errors) >= 10:
                    break
    if errors or not times:
        raise SpecError(errors or [f"{path}: no request rows (header: timestamp,count,duration_s)"])
    start = math.floor(min(times))
    at = (np.array(times, dtype=float) - start).astype(np.int64)
    c = np.array(counts)
    n = int(at.max()) + 1
    return Trace(
        float(start), np.bincount(at, c, minlength=n), np.bincount(at, c * np.array(durations), minlength=n)
    )


SHAPES = ("business-hours", "3pm-peak", "saturday-night")


def shape_rates(shape: str, days: int, peak_qps: float, base_qps: float) -> np.ndarray:
    """Requests/s for each second of ``days`` days from a Monday 00:00 UTC: the field guide's shapes.

    business-hours: ``peak_qps`` 09:00-18:00 on weekdays, ``base_qps`` otherwise; 3pm-peak: a
    daily bell around 15:00 (2 h wide) from ``base_qps`` up to ``peak_qps``; saturday-night:
    ``base_qps``, and ``peak_qps`` on Saturdays 20:00-02:00."""
    if shape not in SHAPES:
        raise SpecError([f"shape: {shape!r} is not one of {', '.join(SHAPES)}"])
    t = np.arange(days * 86_400)
    hour = (t % 86_400) / 3600
    weekday = (t // 86_400) % 7  # 0 = Monday
    if shape == "business-hours":
        on = (weekday < 5) & (hour >= 9) & (hour < 18)
        return np.where(on, peak_qps, base_qps)
    if shape == "3pm-peak":
        return base_qps + (peak_qps - base_qps) * np.exp(-(((hour - 15) / 2) ** 2))
    night = ((weekday == 5) & (hour >= 20)) | ((weekday == 6) & (hour < 2))
    return np.where(night, peak_qps, base_qps)


MONDAY = 1_700_438_400.0  # Monday 2023-11-20 00:00 UTC: where generated traces start


def generate(rates: np.ndarray, duration_s: float, seed: int = 0) -> Trace:
    """A trace with Poisson arrivals at ``rates`` (one a second), each request ``duration_s``."""
    a = np.random.default_rng(seed).poisson(rates).astype(float)
    return Trace(MONDAY, a, a * duration_s)


def write_trace(trace: Trace, out: Any) -> None:
    """The trace as CSV (the seconds with requests only)."""
    out.write("timestamp,count,duration_s\n")
    for i in np.flatnonzero(trace.arrivals):
        c = trace.arrivals[i]
        out.write(f"{trace.start + i:.0f},{c:g},{trace.busy[i] / c:.6g}\n")
