"""Saturation analysis: pure functions from measured steps to the knee, the per-replica
saturation point and the autoscaler recommendation. No clock, no I/O.

Words used here:

- **offered**: what a step asked for (req/s in open loop, requests in flight in closed loop);
- **throughput**: successful answers completed per second within the step's window;
- **knee**: the first step the service did not keep up with — throughput more than ``shortfall``
  below the offered rate, p99 above ``latency_factor`` x the first step's p99 (or above
  ``maxRT``), or errors above ``faultTolerate``;
- **saturation QPS**: the highest throughput seen up to and including the knee (a replica
  past its capacity completes exactly its capacity, so the knee step measures it);
- **saturation concurrency**: by Little's law, saturation QPS x the mean latency at 70% of it
  (the step nearest below): the requests a replica holds at once when it is just saturated,
  counted as the autoscaler will count them at its target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from openeas.stress.plan import FaultAction, Load, Mode, StressPlan

TARGET_FRACTION = 0.7
"""The autoscaler's target is 70% of the saturation point (the field guide's rule): room for the
time a new replica takes to start while the load keeps rising."""
MIN_CONCURRENCY_FOR_METRIC = 2.0
"""Below this saturation concurrency per replica, a concurrency target (70% of it, under 1.4)
is too coarse to steer by: recommend ``qps`` instead."""
DEFAULT_PEAK_MULTIPLE = 2.0
"""With no expected peak given, plan ``max_replicas`` for twice the measured capacity."""
MIN_MISSING = 5
"""A shortfall counts only when at least this many requests of the step's window are missing:
at a few requests per step, one answer crossing the window's edge is not a knee."""
CONCURRENCY_GAIN = 0.10
"""Closed loop: doubling the concurrency must raise throughput by more than 10%, else the knee."""


@dataclass(frozen=True)
class StepResult:
    """One step, measured. Rates in req/s, latencies in ms, times in s from the run's start."""

    index: int
    load: str  # "rate" or "concurrency"
    offered: float  # req/s, or requests in flight
    start_s: float
    duration_s: float
    send_rate: float  # requests actually written per second in the window
    throughput: float  # successful answers per second in the window
    requests: int  # requests the step sent
    ok: int
    errors: int  # requests the step sent that failed (non-2xx, timeout, connection)
    by_status: dict[str, int]
    latency: dict[str, Any]  # Histo.summary(): count, mean_ms, p50, p90, p99, p99.9, max_ms
    replicas: float | None = None  # mean ready replicas during the step; None = not observed
    in_flight: float | None = None  # mean requests in flight at the gateway; None = not observed
    ttft: dict[str, Any] | None = None  # streamed answers: time to first token (ms)
    tpot: dict[str, Any] | None = None  # time per output token after the first (ms)
    tokens_per_s: float | None = None  # output tokens completed per second in the window
    knee: str | None = None  # why this step is past the knee; None when it was served well
    members: list[dict[str, Any]] | None = None  # a group's test: members.breakdown of the step

    @property
    def p99_ms(self) -> float | None:
        v = self.latency.get("p99")
        return float(v) if v is not None else None

    @property
    def mean_ms(self) -> float | None:
        v = self.latency.get("mean_ms")
        return float(v) if v is not None else None

    @property
    def p50_ms(self) -> float | None:
        v = self.latency.get("p50")
        return float(v) if v is not None else None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def knee_reason(step: StepResult, history: Sequence[StepResult], plan: StressPlan) -> str | None:
    """Why ``step`` is past the knee, given the steps before it; None when it was served well."""
    if step.requests and step.error_rate > plan.fault_tolerate and plan.fault_action == FaultAction.STOP:
        return (
            f"errors: {step.error_rate:.1%} of requests failed, above faultTolerate "
            f"({plan.fault_tolerate:.1%})"
        )
    if step.load == Load.RATE:
        # Compared with what was really sent in the window (Poisson arrivals vary around the
        # nominal rate), and only when enough requests are missing to mean something.
        due = step.requests / step.duration_s
        if _short(step.send_rate, due, step.duration_s, plan.shortfall):
            return (
                f"generator: sent only {step.send_rate:.1f} of {due:.1f} req/s due "
                "(the load generator, not the service, is the limit)"
            )
        if _short(step.throughput, step.send_rate, step.duration_s, plan.shortfall):
            short = 1 - step.throughput / step.send_rate
            return (
                f"throughput: {step.throughput:.1f} req/s is {short:.0%} below the {step.send_rate:.1f} "
                f"req/s sent (more than {plan.shortfall:.0%})"
            )
    else:
        prev = history[-1] if history else None
        if prev is not None and prev.throughput > 0 and step.offered > prev.offered:
            gain = step.throughput / prev.throughput - 1
            if gain <= CONCURRENCY_GAIN * (step.offered / prev.offered - 1):
                return (
                    f"throughput: {step.throughput:.1f} req/s at {step.offered:g} in flight, "
                    f"{gain:+.0%} over {prev.offered:g} in flight"
                )
    p99 = step.p99_ms
    if p99 is not None:
        if plan.max_rt_ms is not None and p99 > plan.max_rt_ms:
            return f"latency: p99 {p99:.1f} ms is above maxRT ({plan.max_rt_ms:g} ms)"
        base = baseline_p99(history)
        if base is not None and p99 > plan.latency_factor * base:
            # Confirmed by the step before: one slow step (a pause of a shared machine) is noise;
            # past the knee, every heavier step is slow too. (maxRT, the user's limit, is not waited.)
            before = history[-1].p99_ms if len(history) > 1 else None
            if before is not None and before > plan.latency_factor * base:
                return (
                    f"latency: p99 {p99:.1f} ms is above {plan.latency_factor:g} x the low-load p99 "
                    f"({base:.1f} ms) in 2 steps in a row"
                )
    return None


def _short(got: float, wanted: float, duration_s: float, fraction: float) -> bool:
    missing = wanted - got
    return missing > fraction * wanted and missing * duration_s >= MIN_MISSING


def baseline_p99(history: Sequence[StepResult]) -> float | None:
    """The low-load p99: the first step's (the lightest load of the ramp)."""
    for s in history:
        if s.p99_ms is not None:
            return s.p99_ms
    return None


def next_offered(plan: StressPlan, steps: Sequence[StepResult]) -> float | None:
    """The next step's offered load, or None when the ramp is over (a knee, the last step)."""
    if steps and steps[-1].knee is not None and plan.mode != Mode.MANUAL:
        return None
    if plan.mode == Mode.MANUAL:
        level = plan.rates()[0] if plan.load == Load.RATE else float(plan.concurrencies()[0])
        return level
    if plan.load == Load.CONCURRENCY:
        levels = [float(c) for c in plan.concurrencies()]
        return levels[len(steps)] if len(steps) < len(levels) else None
    if plan.mode == Mode.SCAN:
        rates = plan.rates()
        return rates[len(steps)] if len(steps) < len(rates) else None
    # auto: geometric growth from min_qps until the knee or max_qps
    if not steps:
        return plan.min_qps
    last = steps[-1].offered
    if last >= plan.max_qps:
        return None
    return min(plan.max_qps, round(last * (1 + plan.growth_factor), 3))


@dataclass(frozen=True)
class Saturation:
    found: bool  # a knee was reached (else the numbers are lower bounds)
    qps: float  # total, req/s
    qps_per_replica: float
    concurrency: float  # total requests in flight at saturation
    concurrency_per_replica: float
    replicas: float  # ready replicas at the saturation step
    step: int | None  # index of the knee step
    reason: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for k in ("qps", "qps_per_replica", "concurrency", "concurrency_per_replica", "replicas"):
            out[k] = round(out[k], 3)
        return out


def saturation(steps: Sequence[StepResult], replicas_fallback: float = 1.0) -> Saturation | None:
    """The saturation point from the measured steps; None when no step completed anything."""
    served = [s for s in steps if s.throughput > 0]
    if not served:
        return None
    knee = next((s for s in steps if s.knee is not None), None)
    upto = [s for s in steps if knee is None or s.index <= knee.index]
    best = max((s for s in upto if s.throughput > 0), key=lambda s: s.throughput, default=served[0])
    # A request's time where the autoscaler will hold the replica: at the step nearest below
    # TARGET_FRACTION of the saturation rate. Nearer the knee, random arrivals queue and the
    # latency (so the in-flight count) grows without bound; at the target it is what the
    # autoscaler will see, which makes "target = 70% of the saturation concurrency" mean "70% load".
    ref = TARGET_FRACTION * best.throughput
    good = [s for s in upto if s.knee is None and s.mean_ms is not None and s.throughput > 0]
    below = [s for s in good if s.throughput <= ref]
    lat_step = (
        max(below, key=lambda s: s.throughput) if below else min(good or [best], key=lambda s: s.throughput)
    )
    mean_s = (lat_step.mean_ms or 0.0) / 1000.0
    replicas = best.replicas if best.replicas and best.replicas > 0 else replicas_fallback
    if knee is None:
        reason = (
            f"not reached: the highest load offered ({steps[-1].offered:g}) was served well; "
            "the figures are lower bounds"
        )
    else:
        reason = knee.knee or ""
    qps = best.throughput
    conc = qps * mean_s
    return Saturation(
        found=knee is not None,
        qps=qps,
        qps_per_replica=qps / replicas,
        concurrency=conc,
        concurrency_per_replica=conc / replicas,
        replicas=replicas,
        step=None if knee is None else knee.index,
        reason=reason,
    )


@dataclass(frozen=True)
class Recommendation:
    metric: str  # "concurrent_requests" or "qps"
    target: float  # per replica, in the metric's unit
    min_replicas: int
    max_replicas: int
    expected_peak_qps: float
    peak_source: str
    why: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def autoscaling(self) -> dict[str, Any]:
        """The spec's ``autoscaling`` block this recommends."""
        return {
            "metric": self.metric,
            "target": self.target,
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
        }


def recommend(
    sat: Saturation, *, expected_peak_qps: float | None = None, min_replicas: int = 1
) -> Recommendation:
    """The autoscaler settings for a service that saturates at ``sat``."""
    why: list[str] = []
    if sat.concurrency_per_replica >= MIN_CONCURRENCY_FOR_METRIC:
        metric = "concurrent_requests"
        target = round(TARGET_FRACTION * sat.concurrency_per_replica, 2)
        why.append(
            f"target = {TARGET_FRACTION:.0%} of the saturation concurrency "
            f"({sat.concurrency_per_replica:.2f} requests in flight per replica)"
        )
    else:
        metric = "qps"
        target = round(TARGET_FRACTION * sat.qps_per_replica, 2)
        why.append(
            f"a replica saturates at {sat.concurrency_per_replica:.2f} requests in flight, too few to "
            f"steer by: target = {TARGET_FRACTION:.0%} of its saturation rate "
            f"({sat.qps_per_replica:.1f} req/s)"
        )
    if expected_peak_qps is not None:
        peak, source = expected_peak_qps, "given"
    else:
        peak = DEFAULT_PEAK_MULTIPLE * sat.qps
        source = f"default: {DEFAULT_PEAK_MULTIPLE:g} x the measured capacity"
    per_replica = TARGET_FRACTION * sat.qps_per_replica
    needed = math.ceil(peak / per_replica) if per_replica > 0 else 1
    max_replicas = max(min_replicas, 1, needed)
    why.append(
        f"max_replicas = ceil({peak:.1f} req/s peak / ({TARGET_FRACTION:.0%} x {sat.qps_per_replica:.1f} "
        f"req/s per replica)) = {max_replicas}"
    )
    if not sat.found:
        why.append("the saturation point was not reached: the target may be set too low")
    return Recommendation(
        metric=metric,
        target=target,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        expected_peak_qps=round(peak, 3),
        peak_source=source,
        why=why,
    )
