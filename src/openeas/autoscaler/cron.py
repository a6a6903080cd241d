"""Cron rules: which rule is in force at a wall-clock instant, and which one starts soon.

A rule starts at each time its cron expression fires (in its time zone) and stays in force until
another rule fires: the rule that fired last wins (a tie goes to the one written later). Days
listed in a rule's ``exclude`` (``YYYY-MM-DD`` or an EAS 6-field cron expression matching the day)
are skipped: the rule did not fire then. Everything here is a pure function of the rules and a
wall-clock time in seconds since the epoch; croniter does the calendar arithmetic (5 fields
minute first, or 6 fields seconds first as EAS writes them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from openeas.spec.autoscaling import AutoscalingPolicy, CronRule

# How many excluded firings are skipped looking for one that counts (a rule excluded on every day
# for years is treated as never firing).
MAX_SKIPPED = 1000
# A small step past `wall`, seconds: croniter's get_prev from an exact firing returns the one
# before it, but a rule that fires exactly now is in force now.
_EPS_S = 0.001


@dataclass(frozen=True)
class Firing:
    rule: CronRule
    at: float  # seconds since the epoch


@dataclass(frozen=True)
class CronBounds:
    """The replica bounds cron rules set at an instant."""

    min_replicas: int
    max_replicas: int
    rule: str | None  # the rule in force (None: the policy's own bounds)
    since: float | None  # when it fired, epoch seconds
    prescale: str | None = None  # a rule starting within the lead whose min is already applied
    prescale_at: float | None = None  # when that rule starts, epoch seconds


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _iter(expr: str, seconds_first: bool, start: float, tz: str) -> croniter:
    return croniter(expr, dt.datetime.fromtimestamp(start, _zone(tz)), second_at_beginning=seconds_first)


def excluded(rule: CronRule, at: float) -> bool:
    """Whether the day of ``at`` (in the rule's time zone) is one of the rule's excluded days."""
    if not rule.exclude:
        return False
    local = dt.datetime.fromtimestamp(at, _zone(rule.timezone))
    for ex in rule.exclude:
        if len(ex.split()) == 1:
            if local.date().isoformat() == ex:
                return True
        elif croniter.match(ex, local.replace(tzinfo=None), second_at_beginning=True):
            return True
    return False


def last_firing(rule: CronRule, wall: float) -> float | None:
    """The latest time ≤ ``wall`` the rule fired (excluded days skipped); None if never."""
    try:
        it = _iter(rule.cron, rule.seconds_first, wall + _EPS_S, rule.timezone)
        for _ in range(MAX_SKIPPED):
            t = float(it.get_prev(float))
            if not excluded(rule, t):
                return t
    except CroniterBadDateError:
        return None
    return None


def next_firing(rule: CronRule, wall: float) -> float | None:
    """The first time > ``wall`` the rule fires (excluded days skipped); None if never."""
    try:
        it = _iter(rule.cron, rule.seconds_first, wall, rule.timezone)
        for _ in range(MAX_SKIPPED):
            t = float(it.get_next(float))
            if not excluded(rule, t):
                return t
    except CroniterBadDateError:
        return None
    return None


# The firings around the last instant asked, per rule: (last firing <= wall, next firing > wall).
# Decisions come every fraction of a second live and a month of them in the simulator; croniter
# is only asked again once ``wall`` leaves that interval. A cache of pure functions: same answers.
_AROUND: dict[int, tuple[CronRule, float | None, float | None]] = {}  # by id(rule): hashing is slow
_AROUND_MAX = 1024  # rules remembered; cleared when full


def around(rule: CronRule, wall: float) -> tuple[float | None, float | None]:
    """``(last_firing(rule, wall), next_firing(rule, wall))``, from the cache while ``wall`` is
    still between the two."""
    hit = _AROUND.get(id(rule))
    if hit is not None and hit[0] is rule:
        _, last, nxt = hit
        if last is not None and last <= wall and (nxt is None or wall < nxt - _EPS_S):
            return last, nxt
    last, nxt = last_firing(rule, wall), next_firing(rule, wall)
    if len(_AROUND) >= _AROUND_MAX:
        _AROUND.clear()
    _AROUND[id(rule)] = (rule, last, nxt)  # the rule itself is kept: its id is not reused meanwhile
    return last, nxt


def active_rule(rules: Sequence[CronRule], wall: float) -> Firing | None:
    """The rule in force at ``wall``: the one that fired last (ties: the one written later)."""
    best: Firing | None = None
    for rule in rules:
        at = around(rule, wall)[0]
        if at is not None and (best is None or at >= best.at):
            best = Firing(rule, at)
    return best


def upcoming(rules: Sequence[CronRule], wall: float, lead_s: float) -> list[Firing]:
    """Rules that start after ``wall`` and no later than ``wall + lead_s``, soonest first."""
    out = []
    for rule in rules:
        at = around(rule, wall)[1]
        if at is not None and at <= wall + lead_s:
            out.append(Firing(rule, at))
    return sorted(out, key=lambda f: f.at)


def cron_bounds(policy: AutoscalingPolicy, wall: float, lead_s: float) -> CronBounds:
    """Min and max at ``wall``: the active rule's (else the policy's), with the min raised early
    for a rule that starts within ``lead_s`` and raises it (pre-scaling: its replicas are Ready
    at its time, not a cold start after). The max is only ever raised early, never lowered."""
    fired = active_rule(policy.rules, wall)
    if fired is None:
        bounds = CronBounds(policy.min_replicas, policy.max_replicas, None, None)
    else:
        r = fired.rule
        bounds = CronBounds(r.min_replicas, r.max_replicas, r.name, fired.at)
    for f in upcoming(policy.rules, wall, lead_s):
        if f.rule.min_replicas > bounds.min_replicas:
            bounds = CronBounds(
                f.rule.min_replicas,
                max(bounds.max_replicas, f.rule.min_replicas),
                bounds.rule,
                bounds.since,
                prescale=f.rule.name,
                prescale_at=f.at,
            )
    return bounds
