"""Each guardrail on its own: tables of numbers and timestamps, arithmetic in the comments."""

from __future__ import annotations

import pytest

from openeas.autoscaler import guardrails as g

RECOMMEND = [
    # total, target, current, tolerance, expected
    pytest.param(23 * 2, 10, 2, 0.1, 5, id="eas-doc-example"),  # 2 replicas x 23 qps = 46; ceil(46/10) = 5
    pytest.param(2 * 5, 10, 5, 0.1, 1, id="eas-doc-down"),  # 5 x 2 = 10; ceil(10/10) = 1
    pytest.param(10.5, 10, 1, 0.1, 1, id="within-tolerance-up"),  # 10.5/(1x10) = 1.05, |0.05| <= 0.1: stay 1
    pytest.param(11.5, 10, 1, 0.1, 2, id="past-tolerance-up"),  # 1.15 > 1.1: ceil(1.15) = 2
    pytest.param(36, 10, 4, 0.1, 4, id="within-tolerance-down"),  # 36/40 = 0.9: |-0.1| <= 0.1: stay 4
    pytest.param(35, 10, 4, 0.1, 4, id="past-tolerance-down-rounds-up"),  # 35/40 = 0.875 → ceil(3.5) = 4
    pytest.param(29, 10, 4, 0.1, 3, id="down"),  # 29/40 = 0.725 → ceil(2.9) = 3
    pytest.param(6.0000000001, 2, 1, 0, 3, id="float-fuzz"),  # 6/2 = 3, not 4
    pytest.param(0, 10, 3, 0.1, 0, id="no-load"),
    pytest.param(0.01, 10, 0, 0.1, 1, id="any-load-needs-one"),  # ceil(0.001) = 1
]


@pytest.mark.parametrize(("total", "target", "current", "tolerance", "expected"), RECOMMEND)
def test_recommend(total: float, target: float, current: int, tolerance: float, expected: int) -> None:
    assert g.recommend(total, target, current, tolerance) == expected


PANIC = [
    # panic_total, ready, target, threshold, expected
    pytest.param(8, 2, 2, 2.0, True, id="exactly-2x"),  # capacity 2x2 = 4; 8 >= 2x4
    pytest.param(7.9, 2, 2, 2.0, False, id="below-2x"),
    pytest.param(1, 0, 2, 2.0, True, id="none-ready"),
    pytest.param(0, 0, 2, 2.0, False, id="no-load"),
    pytest.param(None, 1, 2, 2.0, False, id="not-measured"),
]


@pytest.mark.parametrize(("panic_total", "ready", "target", "threshold", "expected"), PANIC)
def test_panic(panic_total: float | None, ready: int, target: float, threshold: float, expected: bool) -> None:
    assert g.panicking(panic_total, ready, target, threshold) is expected


STABILIZE = [
    # history, now, recommendation, current, up window, down window, skip up, expected
    pytest.param((), 0.0, 5, 2, 0, 300, False, 5, id="up-window-0-scales-at-once"),
    pytest.param(((0.0, 2), (30.0, 5)), 50.0, 6, 2, 60, 300, False, 2, id="up-window-lowest-is-current"),
    # up window 60 s at t=70: recs in [10, 70] are 5 (t=30) and 6 → lowest 5 > current 2 → 5
    pytest.param(((0.0, 2), (30.0, 5)), 70.0, 6, 2, 60, 300, False, 5, id="up-window-lowest"),
    pytest.param(((0.0, 2),), 10.0, 6, 2, 60, 300, True, 6, id="panic-skips-up-window"),
    # down window 300 s at t=200: highest of (0,5) (100,3) (200,1) is 5 = current → stay 5
    pytest.param(((0.0, 5), (100.0, 3)), 200.0, 1, 5, 0, 300, False, 5, id="down-window-holds"),
    # at t=350: (0,5) left the window; highest of (100,3) (350,1) is 3 → 3
    pytest.param(((0.0, 5), (100.0, 3)), 350.0, 1, 5, 0, 300, False, 3, id="down-window-highest"),
    pytest.param(((0.0, 5),), 10.0, 1, 5, 0, 0, False, 1, id="down-window-0"),
    # between: up window lowest (3) <= current 4 <= down window highest (6): stay
    pytest.param(((0.0, 6), (5.0, 3)), 10.0, 5, 4, 10, 10, False, 4, id="between-stays"),
]


@pytest.mark.parametrize(
    ("history", "now", "rec", "current", "up", "down", "skip", "expected"), STABILIZE
)
def test_stabilize(
    history: g.History, now: float, rec: int, current: int, up: float, down: float, skip: bool, expected: int
) -> None:
    n, hist = g.stabilize(history, now, rec, current, up_window_s=up, down_window_s=down, skip_up_window=skip)
    assert n == expected
    assert hist[-1] == (now, rec)
    assert all(t >= now - max(up, down) for t, _ in hist)  # old entries are dropped


RATE = [
    # desired, current, counts, now, expected
    pytest.param(20, 2, (), 0.0, 6, id="2x-or-plus-4"),  # max(ceil(2x2), 2+4) = 6
    pytest.param(50, 10, (), 0.0, 20, id="2x-wins"),  # max(20, 14) = 20
    # the base is the lowest count of the last 15 s: 2 at t=5 → cap 6, though current is 6 now
    pytest.param(20, 6, ((5.0, 2), (10.0, 6)), 12.0, 6, id="base-is-lowest-in-period"),
    # at t=21 the (5, 2) entry is older than 15 s: base 6 → max(12, 10) = 12
    pytest.param(20, 6, ((5.0, 2), (10.0, 6)), 21.0, 12, id="period-passed"),
    pytest.param(1, 5, (), 0.0, 1, id="scale-down-unlimited"),
    pytest.param(3, 0, (), 0.0, 3, id="from-zero"),  # max(0, 0+4) = 4 >= 3
]


@pytest.mark.parametrize(("desired", "current", "counts", "now", "expected"), RATE)
def test_rate_limit(desired: int, current: int, counts: g.History, now: float, expected: int) -> None:
    assert g.limit_scale_up(desired, current, counts, now, rate=2.0, step=4, period_s=15.0) == expected


@pytest.mark.parametrize(
    ("n", "lo", "hi", "expected"),
    [(5, 1, 3, 3), (0, 1, 3, 1), (2, 1, 3, 2), (4, 0, 0, 0)],
    ids=["above-max", "below-min", "inside", "max-zero"],
)
def test_bounds(n: int, lo: int, hi: int, expected: int) -> None:
    assert g.apply_bounds(n, lo, hi) == expected


ZERO = [
    # idle since, now, grace, min, expected
    pytest.param(0.0, 600.0, 600, 0, True, id="grace-passed"),
    pytest.param(0.0, 599.0, 600, 0, False, id="grace-not-yet"),
    pytest.param(0.0, 9999.0, 600, 1, False, id="min-1-never"),
    pytest.param(None, 9999.0, 600, 0, False, id="not-idle-or-unknown"),
]


@pytest.mark.parametrize(("since", "now", "grace", "lo", "expected"), ZERO)
def test_zero_grace(since: float | None, now: float, grace: float, lo: int, expected: bool) -> None:
    assert g.zero_due(since, now, grace, lo) is expected


@pytest.mark.parametrize(
    ("previous", "now", "idle", "expected"),
    [(None, 5.0, True, 5.0), (2.0, 5.0, True, 2.0), (2.0, 5.0, False, None), (2.0, 5.0, None, None)],
    ids=["starts", "continues", "load-resets", "unknown-is-not-idle"],
)
def test_idle_since(previous: float | None, now: float, idle: bool | None, expected: float | None) -> None:
    assert g.idle_since(previous, now, idle) == expected
