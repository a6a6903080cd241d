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

Only the traffic metrics (``qps``, ``concurrent_requests``) can be replayed from a trace, and
``backlog`` for an async service (its queue: :mod:`openeas.autoscaler.simqueue`; its requests
wait there instead of slowing the replicas, and the result carries the queue waits); a policy on
another metric is refused by name.

Speed: the loop runs once per decision, never per second: the gateway's windows for every
decision are computed at once with numpy, the Ready count is recounted only when a replica turns
Ready or the count changes, and billing is accounted with cumulative sums at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from openeas.autoscaler.policy import DecisionContext, Observation, PolicyState, Traffic, decide
from openeas.autoscaler.simqueue import AsyncQueue
from openeas.autoscaler.trace import SHAPES, Trace, generate, load_trace, read_trace, shape_rates, write_trace
from openeas.errors import SpecError
from openeas.spec.autoscaling import AutoscalingPolicy
from openeas.spec.models import ServiceSpec

__all__ = [
    "SHAPES",
    "Result",
    "Trace",
    "generate",
    "load_trace",
    "read_trace",
    "shape_rates",
    "simulate",
    "write_trace",
]

SIMULATED_METRICS = ("qps", "concurrent_requests")
DECIDE_EVERY_S = 15.0  # seconds of virtual time between two decisions (the live tick is 0.1 s; a
# decision scans its stabilization history, so a month at 1 s per decision would take minutes)


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
    cold_starts: int = 0  # replicas started during the trace (the deploy's own not counted)
    queue_wait_mean_s: float | None = None  # async services: mean seconds in the queue; None: sync
    queue_wait_p99_s: float | None = None  # async services: 99th percentile of the queue wait

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "requests": round(self.requests),
            "replica_seconds": round(self.replica_seconds, 3),
            "replica_hours": round(self.replica_seconds / 3600, 2),
            "cost": None if self.cost is None else round(self.cost, 2),
            "currency": self.currency,
            "held_share": round(self.held_share, 6),
            "cold_start_share": round(self.cold_share, 6),
            "p99_s": round(self.p99_s, 3),
            "scale_events": self.scale_events,
            "peak_replicas": self.peak_replicas,
            "cold_starts": self.cold_starts,
            "queue_wait_mean_s": None if self.queue_wait_mean_s is None else round(self.queue_wait_mean_s, 3),
            "queue_wait_p99_s": None if self.queue_wait_p99_s is None else round(self.queue_wait_p99_s, 3),
        }


def policy_of(spec: ServiceSpec) -> AutoscalingPolicy:
    policy = spec.autoscaling_policy()
    if policy is None:  # a fixed count: a policy whose bounds pin it
        n = spec.metadata.instance
        return AutoscalingPolicy(min_replicas=n, max_replicas=n, metrics=(), source="autoscaling")
    replayable = (*SIMULATED_METRICS, *(("backlog",) if spec.is_async else ()))
    bad = [m.key for m in policy.metrics if m.kind not in replayable]
    if bad:
        raise SpecError(
            [
                f"autoscaling metric {k}: not replayable from a trace (only {', '.join(replayable)})"
                for k in bad
            ]
        )
    return policy


def _windows(cum: np.ndarray, ts: np.ndarray, span_s: float) -> list[float]:
    """Mean per second over the ``span_s`` seconds before each ``t`` of ``ts`` (cum: a cumulative
    sum, 0 first), over the part covered near the start: every decision's window at once."""
    lo = np.maximum(0, ts - max(1, int(span_s)))
    return ((cum[ts] - cum[lo]) / np.maximum(1, ts - lo)).tolist()


def _check_inputs(cold_starts_s: list[float], capacity_qps: float, decide_every_s: float) -> None:
    errors = []
    if not cold_starts_s or any(c < 0 for c in cold_starts_s):
        errors.append("cold starts: at least one duration ≥ 0 s is needed")
    if capacity_qps <= 0:
        errors.append(f"capacity: {capacity_qps:g} requests/s per replica; must be > 0")
    if decide_every_s < 1:
        errors.append(f"decide_every_s: {decide_every_s:g}; must be ≥ 1 s (the trace's resolution)")
    if errors:
        raise SpecError(errors)


def _observations(
    t: int,
    rate: float,
    rate_p: float,
    busy: float,
    busy_p: float,
    queue: AsyncQueue | None,
    policy: AutoscalingPolicy,
) -> dict[str, Observation]:
    """The metrics a decision at second ``t`` sees (stable and panic windows); none at the first
    second, where no window has data."""
    if t == 0:
        return {}
    obs = {"qps": Observation(rate, rate_p), "concurrent_requests": Observation(busy, busy_p)}
    if queue is not None:
        stable, panic = queue.window(t, policy.metric_window_s), queue.window(t, policy.panic_window_s)
        obs["backlog"] = Observation(stable, panic)
    return obs


def simulate(
    spec: ServiceSpec,
    trace: Trace,
    *,
    cold_starts_s: list[float],
    capacity_qps: float,
    price_per_hour: float | None,
    currency: str = "",
    decide_every_s: float = DECIDE_EVERY_S,
    bounds: tuple[int, int] | None = None,
) -> Result:
    """``bounds``: (min, max) replicas in place of the spec's (the what-if of a better min/max)."""
    _check_inputs(cold_starts_s, capacity_qps, decide_every_s)
    policy = policy_of(spec)
    if bounds is not None:
        policy = policy.model_copy(update={"min_replicas": bounds[0], "max_replicas": bounds[1]})
    n = trace.seconds
    cum_a = np.concatenate(([0.0], np.cumsum(trace.arrivals)))
    cum_b = np.concatenate(([0.0], np.cumsum(trace.busy)))
    billed_d = np.zeros(n + 1)  # +1 at a replica's creation, -1 at its removal
    ready_d = np.zeros(n + 1)  # +1 when it is Ready, -1 at its removal (if it was)
    current = policy.clamp(spec.metadata.instance)
    # [created, ready_at] of each replica; the deploy's are Ready at the start, as a running service's
    live: list[list[int]] = [[0, 0] for _ in range(current)]
    starts = events = 0
    peak = current
    state = PolicyState()
    step = int(decide_every_s)
    # The gateway's windows at every decision, computed at once (numpy), not second by second.
    ts = np.arange(0, n, step)
    rate, rate_p = _windows(cum_a, ts, policy.metric_window_s), _windows(cum_a, ts, policy.panic_window_s)
    busy, busy_p = _windows(cum_b, ts, policy.metric_window_s), _windows(cum_b, ts, policy.panic_window_s)
    recent = (cum_a[ts] - cum_a[np.maximum(0, ts - step)]).astype(np.int64).tolist()
    pending: list[int] = []  # ready_at of the replicas not Ready at the last decision
    n_ready = current
    queue = AsyncQueue(trace, capacity_qps, step) if spec.is_async else None
    for k, t in enumerate(ts.tolist()):
        if pending and min(pending) <= t:
            n_ready = sum(1 for r in live if r[1] <= t)
            pending = [r[1] for r in live if r[1] > t]
        if queue is not None:
            queue.advance(t, [r[1] for r in live])
        obs = _observations(t, rate[k], rate_p[k], busy[k], busy_p[k], queue, policy)
        traffic = Traffic(rate[k], busy[k], recent[k] if n_ready == 0 else 0)
        ctx = DecisionContext(policy, float(t), trace.start + t, current, n_ready, obs, traffic, state)
        decision, state = decide(ctx)
        want = decision.desired
        if queue is not None and current == want == 0 and queue.backlog_now(t) > 0:
            want = 1  # as the server does for an async backlog at 0 replicas (autoscaler/loop.py)
        if want == current:
            continue
        if want > current:
            for _ in range(want - current):
                ready_at = t + math.ceil(cold_starts_s[starts % len(cold_starts_s)])
                live.append([t, ready_at])
                starts += 1
        else:
            live.sort(key=lambda r: r[1], reverse=True)  # the latest to be Ready (starting ones) go first
            for created, ready_at in live[: current - want]:
                _close(billed_d, ready_d, created, ready_at, t, n)
            del live[: current - want]
        n_ready = sum(1 for r in live if r[1] <= t)
        pending = [r[1] for r in live if r[1] > t]
        events += 1
        current = want
        peak = max(peak, current)
    if queue is not None:
        queue.advance(n, [r[1] for r in live])
    for created, ready_at in live:
        _close(billed_d, ready_d, created, ready_at, n, n)
    billed = np.cumsum(billed_d)[:n]
    ready = np.cumsum(ready_d)[:n]
    waits = queue.waits() if queue is not None else None
    result = _account(trace, billed, ready, capacity_qps, price_per_hour, currency, events, peak, waits)
    return replace(result, cold_starts=starts)


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
    waits: np.ndarray | None = None,
) -> Result:
    """Per-second accounting; ``waits``: an async service's queue wait of each second's requests
    (its requests wait in the queue instead of slowing the replicas down)."""
    arrivals = trace.arrivals
    total = float(arrivals.sum())
    mean_d = np.divide(trace.busy, arrivals, out=np.zeros_like(arrivals), where=arrivals > 0)
    cap = ready * capacity_qps
    overload = np.divide(arrivals, cap, out=np.ones_like(arrivals), where=cap > 0)
    latency = mean_d * np.maximum(1.0, overload) if waits is None else mean_d + waits
    held = (ready == 0) & (arrivals > 0)
    if held.any() and waits is None:  # the wait: until the next second with a Ready replica
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
        queue_wait_mean_s=None if waits is None or not total else float((waits * arrivals).sum()) / total,
        queue_wait_p99_s=None if waits is None else _weighted_p99(waits, arrivals),
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
