"""The autoscaler's decision: ``decide(ctx) -> (Decision, PolicyState)``, a pure function.

In: the policy, ``now`` (monotonic seconds, for windows) and ``wall`` (epoch seconds, for cron
rules), the current desired and Ready counts, each metric's service-wide total over its window
(None = no data), the gateway's traffic, and the state the previous decision returned. Out: the
desired count, a human-readable reason with the numbers, and the new state. Nothing here reads a
clock or does I/O; the live loop and a simulator call the same function.

The steps, in order (each a guardrail of :mod:`openeas.autoscaler.guardrails`):

1. cron bounds: the rule in force sets min and max; a rule starting within the pre-scaling lead
   raises min early;
2. a request held at 0 replicas starts ``activation_replicas`` (or more) at once;
3. no data for a metric: nothing moves on metrics (``valid=False``); bounds still apply;
4. per metric ⌈total / target⌉, or the current count within the tolerance; the highest wins;
5. no request for the idle grace (and min 0): 0 replicas; before that at least 1;
6. stabilization (up: lowest of the up window, down: highest of the down window), skipped
   upward in a panic (short-window load ≥ threshold x what the Ready replicas can take), when
   the short window's recommendation counts too (Knative's panic mode);
7. scale-up rate limit; 8. bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from openeas.autoscaler import guardrails as g
from openeas.autoscaler.cron import CronBounds, cron_bounds
from openeas.spec.autoscaling import AutoscalingPolicy, Defaults, MetricTarget


@dataclass(frozen=True)
class Observation:
    """One metric, summed over the service's Ready replicas (or the gateway's view)."""

    total: float | None  # mean over the policy's metric window; None = no data
    panic_total: float | None = None  # mean over the panic window; None = not measured


@dataclass(frozen=True)
class Traffic:
    """The gateway's view of a service's requests (the scale-to-zero and from-zero signals)."""

    arrival_rate: float  # requests/s over the metric window
    in_flight: float  # mean requests being proxied over the metric window
    held: int  # requests waiting now for a replica

    @property
    def idle(self) -> bool:
        return self.arrival_rate <= 0 and self.in_flight <= 0 and self.held <= 0


@dataclass(frozen=True)
class PolicyState:
    """What one decision hands the next: timestamps, never tick counts."""

    recommendations: g.History = ()  # (now, recommendation): the stabilization windows
    counts: g.History = ()  # (now, decided count): the scale-up rate limit
    idle_since: float | None = None  # first `now` with no request, while there is none


@dataclass(frozen=True)
class DecisionContext:
    policy: AutoscalingPolicy
    now: float  # monotonic seconds
    wall: float  # epoch seconds (cron rules)
    current: int  # desired replicas in the store now
    ready: int  # Ready replicas of the service
    observations: Mapping[str, Observation]  # by MetricTarget.key
    traffic: Traffic | None = None  # None: the gateway's counters are not available
    state: PolicyState = field(default_factory=PolicyState)
    prescale_lead_s: float = Defaults.PRESCALE_FALLBACK_S  # seconds; the p90 cold start


@dataclass(frozen=True)
class MetricReading:
    key: str
    target: float  # per replica
    total: float | None  # service-wide
    per_replica: float | None  # total / Ready replicas (total itself with none Ready)
    recommendation: int | None
    panic: bool = False


@dataclass(frozen=True)
class Decision:
    desired: int
    current: int
    valid: bool  # False: a metric had no data; nothing moved on metrics
    reason: str
    recommendation: int | None  # the highest metric recommendation (before the guardrails)
    readings: tuple[MetricReading, ...]
    bounds: CronBounds
    panic: bool = False

    @property
    def changed(self) -> bool:
        return self.desired != self.current


def _reading(m: MetricTarget, obs: Observation | None, ctx: DecisionContext) -> MetricReading:
    p = ctx.policy
    total = obs.total if obs is not None else None
    if total is None:
        return MetricReading(m.key, m.target, None, None, None)
    rec = g.recommend(total, m.target, ctx.current, p.tolerance)
    panic_total = obs.panic_total if obs else None
    panic = g.panicking(panic_total, ctx.ready, m.target, p.panic_threshold)
    if panic and panic_total is not None:
        # Knative: in a panic the short window's load sets the count (the long window lags a burst).
        rec = max(rec, g.recommend(panic_total, m.target, ctx.current, p.tolerance))
    return MetricReading(m.key, m.target, total, total / max(ctx.ready, 1), rec, panic)


def describe_readings(readings: tuple[MetricReading, ...]) -> str:
    parts = []
    for r in readings:
        if r.total is None:
            parts.append(f"{r.key}: no data")
        else:
            per = f"{r.per_replica:.2f}/replica (total {r.total:.2f}, target {r.target:g})"
            parts.append(f"{r.key} {per} → {r.recommendation}")
    return "; ".join(parts) if parts else "no metrics"


def decide(ctx: DecisionContext) -> tuple[Decision, PolicyState]:
    p, st, now = ctx.policy, ctx.state, ctx.now
    bounds = cron_bounds(
        p, ctx.wall, p.prescale_lead_s if p.prescale_lead_s is not None else ctx.prescale_lead_s
    )
    readings = tuple(_reading(m, ctx.observations.get(m.key), ctx) for m in p.metrics)
    idle_from = g.idle_since(st.idle_since, now, None if ctx.traffic is None else ctx.traffic.idle)
    recs = [r.recommendation for r in readings if r.recommendation is not None]
    top = max(recs) if recs else None
    numbers = describe_readings(readings)
    note = _bounds_note(bounds)

    def done(
        desired: int,
        reason: str,
        *,
        valid: bool = True,
        panic: bool = False,
        recommendations: g.History = st.recommendations,
    ) -> tuple[Decision, PolicyState]:
        counts = st.counts
        if desired != ctx.current or not counts:
            counts = (*(c for c in counts if c[0] >= now - p.rate_period_s), (now, desired))
        decision = Decision(desired, ctx.current, valid, reason, top, readings, bounds, panic)
        return decision, PolicyState(recommendations, counts, idle_from)

    # 2. A request waits at 0 replicas: start replicas now, whatever the windows say.
    t = ctx.traffic
    if ctx.current == 0 and t is not None and not t.idle:
        n = g.apply_bounds(max(p.activation_replicas, top or 0), bounds.min_replicas, bounds.max_replicas)
        why = f"scale from zero: {t.held} held, {t.in_flight:.1f} in flight, {t.arrival_rate:.2f} req/s"
        return done(n, f"{why} → {n} ({numbers}){note}")

    # 3. No data: never move on missing metrics; bounds (cron rules) still apply.
    missing = [r.key for r in readings if r.total is None]
    if missing:
        n = g.apply_bounds(ctx.current, bounds.min_replicas, bounds.max_replicas)
        why = f"no data for {', '.join(missing)}: not scaling on metrics"
        return done(n, f"{why}; {_outcome(ctx.current, n)}{note}", valid=False)
    if top is None:  # no metric configured: the count follows the bounds alone
        n = g.apply_bounds(ctx.current, bounds.min_replicas, bounds.max_replicas)
        return done(n, f"no metric; {_outcome(ctx.current, n)}{note}")

    # 5. Scale to zero after the idle grace (it is its own window: the down window does not add).
    if g.zero_due(idle_from, now, p.scale_to_zero_grace_s, bounds.min_replicas):
        assert idle_from is not None
        why = f"no request for {now - idle_from:.0f}s (grace {p.scale_to_zero_grace_s:g}s)"
        return done(0, f"{why}; {_outcome(ctx.current, 0)}{note}", recommendations=())
    rec, floor = _keep_one(top, ctx.current, p, bounds)

    # 6. Stabilization, skipped upward in a panic.
    panic = any(r.panic for r in readings)
    stable, hist = g.stabilize(
        st.recommendations,
        now,
        rec,
        ctx.current,
        up_window_s=p.scale_up_window_s,
        down_window_s=p.scale_down_window_s,
        skip_up_window=panic,
    )
    held = _window_note(stable, rec, ctx.current, hist, now, p)
    # 7. Rate limit; 8. bounds.
    limited = g.limit_scale_up(
        stable,
        ctx.current,
        st.counts,
        now,
        rate=p.max_scale_up_rate,
        step=p.max_scale_up_step,
        period_s=p.rate_period_s,
    )
    if limited < stable:
        held += f"; scale-up rate limit {limited}"
    n = g.apply_bounds(limited, bounds.min_replicas, bounds.max_replicas)
    if panic and n > ctx.current:
        held += f"; panic (load ≥ {p.panic_threshold:g}x Ready capacity): up window skipped"
    return done(
        n, f"{numbers}{floor}{held}; {_outcome(ctx.current, n)}{note}", panic=panic, recommendations=hist
    )


def _keep_one(top: int, current: int, p: AutoscalingPolicy, bounds: CronBounds) -> tuple[int, str]:
    """No load while replicas run: keep 1 until the idle grace scales to zero (step 5 does)."""
    if top != 0 or current == 0:
        return top, ""
    if bounds.min_replicas > 0:
        return 1, "; no load"
    return 1, f"; no load, 1 replica kept until {p.scale_to_zero_grace_s:g}s without requests"


def _window_note(
    stable: int, rec: int, current: int, hist: g.History, now: float, p: AutoscalingPolicy
) -> str:
    """Why stabilization held the count (or part of it) where it is; "" when it did not."""
    if stable == current and rec > current:
        up_low = min(r for t, r in hist if t >= now - p.scale_up_window_s)
        return f"; up window {p.scale_up_window_s:g}s: lowest recommendation {up_low}"
    if stable == current and rec < current:
        down_high = max(r for t, r in hist if t >= now - p.scale_down_window_s)
        return f"; down window {p.scale_down_window_s:g}s: highest recommendation {down_high}"
    if current > stable > rec:
        return f"; down window {p.scale_down_window_s:g}s keeps {stable}"
    return ""


def _outcome(current: int, n: int) -> str:
    if n > current:
        return f"scale up {current} → {n}"
    if n < current:
        return f"scale down {current} → {n}"
    return f"stay at {n}"


def _bounds_note(b: CronBounds) -> str:
    note = f" [bounds {b.min_replicas}..{b.max_replicas}"
    if b.rule:
        note += f" from rule {b.rule}"
    if b.prescale:
        note += f"; pre-scaling for rule {b.prescale}"
    return note + "]"
