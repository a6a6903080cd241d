"""Cron rules: the rule in force at an instant (across midnight, in time zones, with excluded
days) and pre-scaling before a rule's time. Instants are written as local ISO times."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from openeas.autoscaler.cron import active_rule, around, cron_bounds, last_firing, next_firing
from openeas.spec.autoscaling import AutoscalingPolicy, CronRule


def at(iso: str, tz: str = "UTC") -> float:
    return dt.datetime.fromisoformat(iso).replace(tzinfo=ZoneInfo(tz)).timestamp()


def rule(name: str, cron: str, lo: int, hi: int, tz: str = "UTC", exclude: tuple[str, ...] = ()) -> CronRule:
    return CronRule(
        name=name, cron=cron, seconds_first=len(cron.split()) == 6, min_replicas=lo, max_replicas=hi,
        timezone=tz, exclude=exclude,
    )


FIELD_GUIDE = (
    rule("business-hours", "0 9 * * MON-FRI", 3, 20),
    rule("off-hours", "0 19 * * MON-FRI", 1, 5),
    rule("weekends", "0 0 * * SAT,SUN", 0, 3),
)
SHANGHAI = (rule("day", "0 0 8 * * *", 4, 8, "Asia/Shanghai"), rule("night", "0 0 22 * * *", 1, 2, "Asia/Shanghai"))

ACTIVE = [
    # rules, instant (UTC unless said), expected rule name
    pytest.param(FIELD_GUIDE, at("2024-01-03T10:00"), "business-hours", id="wednesday-10h"),  # Jan 3 2024 is a Wednesday
    pytest.param(FIELD_GUIDE, at("2024-01-03T09:00"), "business-hours", id="exactly-at-the-rule-time"),
    pytest.param(FIELD_GUIDE, at("2024-01-03T08:59:59"), "off-hours", id="one-second-before"),  # Tue 19:00 fired last
    pytest.param(FIELD_GUIDE, at("2024-01-04T02:00"), "off-hours", id="across-midnight"),  # Wed 19:00 < Thu 02:00
    pytest.param(FIELD_GUIDE, at("2024-01-06T12:00"), "weekends", id="saturday"),
    # Monday 08:00: the last firing is Sunday 00:00 (weekends), not Friday 19:00
    pytest.param(FIELD_GUIDE, at("2024-01-08T08:00"), "weekends", id="monday-before-9"),
    # 23:30 in Shanghai is 15:30 UTC: 'night' fired at 22:00 local (14:00 UTC)
    pytest.param(SHANGHAI, at("2024-01-05T23:30", "Asia/Shanghai"), "night", id="shanghai-late"),
    # 01:00 on the 6th in Shanghai is 17:00 UTC on the 5th: still the night that began at 22:00 on the 5th
    pytest.param(SHANGHAI, at("2024-01-06T01:00", "Asia/Shanghai"), "night", id="shanghai-after-midnight"),
    # 07:59 UTC is 15:59 in Shanghai: 'day' (08:00 local = 00:00 UTC) is in force
    pytest.param(SHANGHAI, at("2024-01-05T07:59"), "day", id="utc-morning-is-shanghai-afternoon"),
]


@pytest.mark.parametrize(("rules", "wall", "expected"), ACTIVE)
def test_active_rule(rules: tuple[CronRule, ...], wall: float, expected: str) -> None:
    fired = active_rule(rules, wall)
    assert fired is not None and fired.rule.name == expected


def test_excluded_days_do_not_fire() -> None:
    r = rule("xmas-off", "0 0 9 * * *", 5, 5, exclude=("2024-12-25", "* * * 1 1 *"))
    # Dec 25 09:00 is excluded: the last firing on the 25th at noon is the 24th's
    assert last_firing(r, at("2024-12-25T12:00")) == at("2024-12-24T09:00")
    # the next firing after Dec 31 10:00 skips Jan 1 (cron-excluded): Jan 2 09:00
    assert next_firing(r, at("2024-12-31T10:00")) == at("2025-01-02T09:00")
    # on an excluded day the rule that fired before stays in force
    other = rule("night", "0 0 20 * * *", 1, 1)
    fired = active_rule((r, other), at("2024-12-25T12:00"))
    assert fired is not None and fired.rule.name == "night"  # Dec 24 20:00 > Dec 24 09:00


def test_excluded_days_in_the_rules_time_zone() -> None:
    # 2024-12-25 02:00 in Shanghai is still the 24th in UTC: the exclusion follows the rule's zone
    r = rule("r", "0 0 2 * * *", 1, 1, "Asia/Shanghai", exclude=("2024-12-25",))
    assert last_firing(r, at("2024-12-25T03:00", "Asia/Shanghai")) == at("2024-12-24T02:00", "Asia/Shanghai")


def policy(rules: tuple[CronRule, ...], lo: int = 1, hi: int = 4) -> AutoscalingPolicy:
    return AutoscalingPolicy(source="autoscaling", metrics=(), min_replicas=lo, max_replicas=hi, rules=rules)


PRESCALE = [
    # instant, lead (s), expected (min, max, rule in force, pre-scaling rule)
    # Wed 08:59:30 with a 60 s lead: business-hours (min 3) starts in 30 s → min raised now
    pytest.param(at("2024-01-03T08:59:30"), 60, (3, 5, "off-hours", "business-hours"), id="within-lead"),
    pytest.param(at("2024-01-03T08:58:30"), 60, (1, 5, "off-hours", None), id="before-lead"),  # 90 s > 60 s
    pytest.param(at("2024-01-03T09:00:00"), 60, (3, 20, "business-hours", None), id="at-rule-time"),
    # Fri 18:59:30: off-hours (min 1) lowers min: never applied early
    pytest.param(at("2024-01-05T18:59:30"), 60, (3, 20, "business-hours", None), id="lowering-not-early"),
]


@pytest.mark.parametrize(("wall", "lead", "expected"), PRESCALE)
def test_prescaling(wall: float, lead: float, expected: tuple[int, int, str | None, str | None]) -> None:
    b = cron_bounds(policy(FIELD_GUIDE), wall, lead)
    assert (b.min_replicas, b.max_replicas, b.rule, b.prescale) == expected


def test_no_rule_fired_yet_uses_the_policy_bounds() -> None:
    never = rule("leap", "0 0 0 29 2 *", 5, 5)  # Feb 29 only
    b = cron_bounds(policy((never,), 1, 4), at("2023-03-01T00:00"), 0)
    # it did fire on 2020-02-29: croniter looks back years
    assert (b.rule, b.min_replicas) == ("leap", 5)
    b = cron_bounds(policy((), 1, 4), at("2023-03-01T00:00"), 0)
    assert (b.min_replicas, b.max_replicas, b.rule) == (1, 4, None)


@pytest.mark.parametrize(
    "r",
    [
        pytest.param(rule("b", "0 9 * * MON-FRI", 3, 9), id="weekdays"),
        pytest.param(rule("e", "0 0 9 * * *", 2, 4, exclude=("2024-03-06",)), id="eas-excluded-day"),
        pytest.param(rule("z", "30 8 * * *", 1, 2, tz="Asia/Shanghai"), id="time-zone"),
    ],
)
def test_the_cached_firings_are_the_computed_ones(r: CronRule) -> None:
    # every 7 minutes over 3 days, and the instants at and around each firing
    walls = [at("2024-03-04T00:00:00") + 420 * i for i in range(3 * 24 * 60 // 7)]
    fired = sorted({f for w in walls if (f := last_firing(r, w)) is not None})
    walls = sorted(walls + [f + d for f in fired for d in (-0.002, -0.0005, 0.0, 0.0005)])
    for w in walls:
        assert around(r, w) == (last_firing(r, w), next_firing(r, w)), w
