"""Guardrails: small pure steps composed around a metric's recommendation (DESIGN §3 rule 3).

Each takes numbers and timestamps and returns numbers; none reads a clock or keeps state of its
own (the caller threads :class:`~openeas.autoscaler.policy.PolicyState` through). Counts are
replicas, times are seconds on one monotonic scale, ``total`` is a metric summed over the service.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

History = tuple[tuple[float, int], ...]  # (time in seconds, replicas), oldest first

# Float fuzz when dividing a total by a target: 6.0000000001 / 2 must not become 4 replicas.
_FUZZ = 1e-9


def within_tolerance(total: float, current: int, target: float, tolerance: float) -> bool:
    """EAS's tolerance: the current count is right while the load per replica is within
    ±``tolerance`` of the target (``current`` replicas can take ``current x target``)."""
    if current <= 0:
        return False
    return abs(total / (current * target) - 1.0) <= tolerance


def recommend(total: float, target: float, current: int, tolerance: float) -> int:
    """Replicas one metric asks for: ⌈total / target⌉, or ``current`` within the tolerance; 0 when
    there is no load at all."""
    if total <= 0:
        return 0
    if within_tolerance(total, current, target, tolerance):
        return current
    return max(1, math.ceil(total / target - _FUZZ))


def panicking(panic_total: float | None, ready: int, target: float, threshold: float) -> bool:
    """Knative's panic: the short-window load is at least ``threshold`` x what the Ready replicas
    can take. With no Ready replica, any load is a panic."""
    if panic_total is None or panic_total <= 0:
        return False
    if ready <= 0:
        return True
    return panic_total >= threshold * ready * target


def stabilize(
    history: History,
    now: float,
    recommendation: int,
    current: int,
    *,
    up_window_s: float,
    down_window_s: float,
    skip_up_window: bool = False,
) -> tuple[int, History]:
    """HPA's stabilization: scale up only to the *lowest* recommendation of the up window, down
    only to the *highest* of the down window; in between, stay. Returns the count and the
    history with ``(now, recommendation)`` added and entries older than both windows dropped.
    ``skip_up_window`` (a panic) scales up to the recommendation at once."""
    # Plain loops, no generator per window: the simulator calls this for every decision of a month.
    keep_from = now - max(up_window_s, down_window_s)
    first = 0
    while first < len(history) and history[first][0] < keep_from:  # oldest first: drop a prefix
        first += 1
    kept = history[first:]
    hist = (*kept, (now, recommendation))
    up_from, down_from = now - up_window_s, now - down_window_s
    up = down = recommendation
    for t, r in kept:
        if t >= up_from and r < up:
            up = r
        if t >= down_from and r > down:
            down = r
    if skip_up_window:
        up = recommendation
    if current < up:
        return up, hist
    if current > down:
        return down, hist
    return current, hist


def limit_scale_up(
    desired: int,
    current: int,
    counts: Sequence[tuple[float, int]],
    now: float,
    *,
    rate: float,
    step: int,
    period_s: float,
) -> int:
    """HPA's scale-up policy: within any ``period_s`` the count grows to at most
    ``max(⌈base x rate⌉, base + step)``, ``base`` being the lowest count of that period."""
    if desired <= current:
        return desired
    base = min([current, *(n for t, n in counts if t >= now - period_s)])
    cap = max(math.ceil(base * rate - _FUZZ), base + step)
    return min(desired, cap)


def apply_bounds(n: int, min_replicas: int, max_replicas: int) -> int:
    """Clamp to [min, max] (the cron rule's, when one is in force)."""
    return max(min_replicas, min(max_replicas, n))


def idle_since(previous: float | None, now: float, idle: bool | None) -> float | None:
    """Since when the service has had no request (None: it has one now, or nobody knows)."""
    if not idle:
        return None
    return previous if previous is not None else now


def zero_due(idle_from: float | None, now: float, grace_s: float, min_replicas: int) -> bool:
    """Scale to zero: allowed (min 0) and no request for the whole grace period."""
    return min_replicas == 0 and idle_from is not None and now - idle_from >= grace_s
