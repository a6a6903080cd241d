"""What a better min/max would save (issue 24 §4, autoscaler/whatif.py): the idle-spend alarm's
what-if, replayed through the simulator from hourly request counts, on virtual time."""

from __future__ import annotations

from typing import Any

import pytest

from openeas.autoscaler.whatif import (
    COLD_SLACK,
    HELD_SLACK,
    P99_SLACK,
    WINDOW_H,
    Capacity,
    better_bounds,
    candidates,
    hourly_trace,
)
from openeas.spec import parse_spec
from openeas.spec.models import ServiceSpec
from tests.harness import service_spec

NOW = 1_800_000_000.0  # epoch seconds (a UTC hour starts at 1_799_999_200)
HOUR = float(int(NOW // 3600) * 3600)  # the start of NOW's hour
CAP = Capacity(qps=12.0, concurrency=1.2)  # a 0.1 s request
OFFPEAK = 1800  # requests an hour: the field guide's 0.5 QPS
PEAK = 80 * 3600  # 80 QPS: 8 replicas at a qps target of 10
AUTO = {"metric": "qps", "target": 10, "min_replicas": 10, "max_replicas": 20}


def spec(autoscaling: dict[str, Any] | None = None) -> ServiceSpec:
    s = service_spec("svc", replicas=10)
    if autoscaling is not None:
        s["autoscaling"] = autoscaling
    return parse_spec(s)


def hours(*counts: int) -> dict[float, int]:
    """counts[0] is the hour just before NOW's, counts[1] the one before it, …"""
    return {HOUR - (h + 1) * 3600: n for h, n in enumerate(counts)}


def test_the_documented_defaults() -> None:
    assert (WINDOW_H, HELD_SLACK, COLD_SLACK, P99_SLACK) == (24, 0.001, 0.01, 0.10)


@pytest.mark.parametrize(
    ("lo", "hi", "scales", "want"),
    [
        pytest.param(10, 20, True, [(1, 20), (3, 20), (5, 20)], id="field-guide-min-10"),
        pytest.param(10, 10, False, [(1, 1), (3, 3), (5, 5)], id="fixed-count-keeps-min-eq-max"),
        pytest.param(2, 5, True, [(1, 5)], id="min-2-to-1"),
        pytest.param(1, 5, True, [], id="min-1-nothing-lower"),
    ],
)
def test_candidates(lo: int, hi: int, scales: bool, want: list[tuple[int, int]]) -> None:
    assert candidates(lo, hi, scales) == want


def test_the_trace_is_the_last_whole_hours_each_spread_evenly() -> None:
    counts = {**hours(3600, 0, 7200), HOUR: 999, HOUR - 5 * 3600: 5}  # NOW's hour and one too old
    trace, n = hourly_trace(counts, NOW + 1800, window_h=3)
    assert (trace.start, trace.seconds, n) == (HOUR - 3 * 3600, 3 * 3600, 10800)
    assert trace.arrivals[0] == 2.0 and trace.arrivals[3600] == 0.0 and trace.arrivals[-1] == 1.0


@pytest.mark.parametrize(
    ("autoscaling", "counts", "pair", "per_month"),
    [
        # 9 replicas x 5 RMB/h x 720 h = 32,400; the autoscaled one starts at 10 and needs its
        # scale-down window (300 s) to reach 1: 9 x 300 s x 5 RMB/h over 6 h x 120 = 22.5 less
        pytest.param(AUTO, [OFFPEAK] * 6, (1, 20), 32377.5, id="field-guide-autoscaled-min-1"),
        pytest.param(None, [OFFPEAK] * 6, (1, 1), 32400.0, id="field-guide-fixed-count-1"),
        # a peak (8 replicas) every other hour, the last hour a peak: 3 scale-ups from min 1, 3
        # or 5 each slow the peak's first seconds beyond the p99 slack: none is as good
        pytest.param(AUTO, [PEAK, OFFPEAK] * 3, None, 0.0, id="three-peaks-no-candidate-as-good"),
        # the first hour a peak: 2 scale-ups; from min 3 they stay within the slack (from 1: not)
        pytest.param(AUTO, [OFFPEAK, PEAK] * 3, (3, 20), 15437.5, id="two-peaks-min-3"),
        pytest.param(None, [OFFPEAK, PEAK] * 3, None, 0.0, id="fixed-count-overloads"),
    ],
)
def test_what_a_better_min_max_saves(
    autoscaling: dict[str, Any] | None, counts: list[int], pair: tuple[int, int] | None, per_month: float
) -> None:
    what = better_bounds(
        spec(autoscaling), hours(*counts), NOW, cold_starts_s=[30.0], capacity=CAP,
        price_per_hour=5.0, currency="RMB", window_h=6,
    )  # fmt: skip
    assert what.missing == () and what.per_month == pytest.approx(per_month)
    if pair is None:
        assert what.message() == "the simulator finds no min/max that saves on the last 6 h of requests"
    else:
        assert (what.min_replicas, what.max_replicas) == pair
        assert what.message() == (
            f"the simulator says min {pair[0]} / max {pair[1]} would save {per_month:,.2f} RMB/month "
            "(the last 6 h of requests)"
        )


FULL: dict[str, Any] = {"cold_starts_s": [30.0], "capacity": CAP, "price_per_hour": 5.0}


@pytest.mark.parametrize(
    ("autoscaling", "counts", "change", "missing"),
    [
        pytest.param(
            None, [OFFPEAK], {"price_per_hour": None}, "catalog price for the service", id="no-price"
        ),
        pytest.param(None, [OFFPEAK], {"capacity": None}, "capacity figure (a stress report", id="no-stress"),
        pytest.param(None, [OFFPEAK], {"cold_starts_s": []}, "measured cold start", id="no-cold-start"),
        pytest.param(None, [], {}, "request counts in the last 6 h", id="no-requests"),
        pytest.param(
            {"metric": "cpu", "target": 50, "min_replicas": 10, "max_replicas": 20},
            [OFFPEAK],
            {},
            "replayable policy (autoscaling metric cpu: not replayable",
            id="cpu-not-replayable",
        ),
    ],
)
def test_a_missing_input_is_named_not_defaulted(
    autoscaling: dict[str, Any] | None, counts: list[int], change: dict[str, Any], missing: str
) -> None:
    kw = {**FULL, **change}
    what = better_bounds(spec(autoscaling), hours(*counts), NOW, currency="RMB", window_h=6, **kw)
    assert what.per_month is None and len(what.missing) == 1 and what.missing[0].startswith(missing)
    assert what.message().startswith("what a better min/max would save is unknown: no " + missing)
