"""decide(ctx): one decision per table row, then sequences driven by a fake clock (windows, no
flapping, zero grace). The arithmetic of each expectation is in its comment."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from openeas.autoscaler import Decision, DecisionContext, Observation, PolicyState, Traffic, decide
from openeas.spec.autoscaling import AutoscalingPolicy, CronRule, MetricTarget

WALL = 1_704_276_000.0  # 2024-01-03 10:00 UTC, a Wednesday (cron rules below fire at 09:00)
CONC = MetricTarget(kind="concurrent_requests", target=2)
QPS = MetricTarget(kind="qps", target=2)
CUSTOM = MetricTarget(kind="custom", target=1, custom_metric="testserver_requests_in_flight")


def pol(*metrics: MetricTarget, **kw: object) -> AutoscalingPolicy:
    args: dict[str, object] = {
        "source": "autoscaling",
        "metrics": metrics or (CONC,),
        "min_replicas": 1,
        "max_replicas": 10,
        "scale_down_window_s": 0.0,
    }
    args.update(kw)
    return AutoscalingPolicy.model_validate(args)


BUSY = Traffic(arrival_rate=1.0, in_flight=1.0, held=0)
IDLE = Traffic(arrival_rate=0.0, in_flight=0.0, held=0)


def ctx(
    policy: AutoscalingPolicy,
    totals: dict[str, float | None],
    *,
    current: int = 1,
    ready: int | None = None,
    traffic: Traffic | None = BUSY,
    now: float = 100.0,
    state: PolicyState | None = None,
    panic: dict[str, float] | None = None,
) -> DecisionContext:
    obs = {k: Observation(v, (panic or {}).get(k)) for k, v in totals.items()}
    return DecisionContext(
        policy=policy, now=now, wall=WALL, current=current, ready=current if ready is None else ready,
        observations=obs, traffic=traffic, state=state or PolicyState(),
    )


PEAK = CronRule(name="peak", cron="0 9 * * *", seconds_first=False, min_replicas=4, max_replicas=6, timezone="UTC")

ONE = [
    # context, expected desired, expected valid
    # the TPS lie: 1.5 req/s of 2 s requests = 3 in flight. concurrency: ceil(3/2) = 2; qps: ceil(1.5/2) = 1
    pytest.param(ctx(pol(CONC), {"concurrent_requests": 3.0}), 2, True, id="concurrency-scales-out"),
    pytest.param(ctx(pol(QPS), {"qps": 1.5}), 1, True, id="qps-same-numbers-does-not"),
    # several metrics: ceil(3/2) = 2 and ceil(9/2) = 5 → the highest, 5
    pytest.param(ctx(pol(CONC, QPS), {"concurrent_requests": 3.0, "qps": 9.0}), 5, True, id="highest-wins"),
    # custom in-flight gauge summed over 2 replicas: 5.0 / target 1 → 5
    pytest.param(ctx(pol(CUSTOM), {CUSTOM.key: 5.0}, current=2), 5, True, id="custom-metric"),
    # 4.3 in flight on 2 replicas of target 2: 4.3/4 = 1.075 within 10%: stay 2
    pytest.param(ctx(pol(CONC), {"concurrent_requests": 4.3}, current=2), 2, True, id="tolerance"),
    pytest.param(ctx(pol(CONC), {"concurrent_requests": None}, current=3), 3, False, id="no-data-no-change"),
    pytest.param(ctx(pol(CONC, QPS), {"concurrent_requests": 0.0, "qps": None}, current=3), 3, False,
                 id="one-metric-missing-no-change"),
    # no data, but the 'peak' rule (fired 09:00) sets min 4: bounds still apply
    pytest.param(ctx(pol(CONC, rules=(PEAK,)), {"concurrent_requests": None}), 4, False, id="no-data-rule-min"),
    # 40 in flight → ceil(40/2) = 20, capped by max 10
    pytest.param(ctx(pol(CONC), {"concurrent_requests": 40.0}, current=8), 10, True, id="max"),
    # the rate limit: from 1, at most max(ceil(1x2), 1+4) = 5 although 20 are asked for
    pytest.param(ctx(pol(CONC, max_replicas=50), {"concurrent_requests": 40.0}), 5, True, id="rate-limit"),
    # a request held at 0 replicas starts activation_replicas (2) at once
    pytest.param(ctx(pol(CONC, min_replicas=0, activation_replicas=2), {"concurrent_requests": 0.0}, current=0,
                     traffic=Traffic(0.0, 1.0, 1)), 2, True, id="from-zero-activation"),
    # from zero with a metric already asking for more: ceil(7/2) = 4 > activation 1
    pytest.param(ctx(pol(CONC, min_replicas=0), {"concurrent_requests": 7.0}, current=0,
                     traffic=Traffic(0.0, 7.0, 7)), 4, True, id="from-zero-metric"),
    # from zero, with custom metrics that have no data (no replica to scrape): still starts
    pytest.param(ctx(pol(CUSTOM, min_replicas=0), {CUSTOM.key: None}, current=0,
                     traffic=Traffic(0.0, 0.0, 1)), 1, True, id="from-zero-without-replica-metrics"),
    pytest.param(ctx(pol(CONC, min_replicas=0), {"concurrent_requests": 0.0}, current=0, traffic=IDLE), 0, True,
                 id="zero-stays-zero"),
    # no load, min 0, grace not over: one replica is kept
    pytest.param(ctx(pol(CONC, min_replicas=0), {"concurrent_requests": 0.0}, current=3, traffic=IDLE), 1, True,
                 id="no-load-keeps-one"),
    # idle since t=0, now 600 = grace 600 → 0
    pytest.param(ctx(pol(CONC, min_replicas=0, scale_to_zero_grace_s=600), {"concurrent_requests": 0.0}, current=1,
                     traffic=IDLE, now=600.0, state=PolicyState(idle_since=0.0)), 0, True, id="zero-after-grace"),
    pytest.param(ctx(pol(CONC, min_replicas=0, scale_to_zero_grace_s=600), {"concurrent_requests": 0.0}, current=1,
                     traffic=IDLE, now=599.0, state=PolicyState(idle_since=0.0)), 1, True, id="zero-grace-not-over"),
    # no traffic data at all: never "idle", never zero
    pytest.param(ctx(pol(CONC, min_replicas=0, scale_to_zero_grace_s=0), {"concurrent_requests": 0.0}, current=1,
                     traffic=None, now=10_000.0, state=PolicyState(idle_since=0.0)), 1, True, id="zero-needs-traffic-data"),
]


@pytest.mark.parametrize(("context", "desired", "valid"), ONE)
def test_one_decision(context: DecisionContext, desired: int, valid: bool) -> None:
    decision, _ = decide(context)
    assert (decision.desired, decision.valid) == (desired, valid), decision.reason
    assert decision.reason  # every decision says why, the ones that change nothing included


def test_reason_names_the_numbers() -> None:
    d, _ = decide(ctx(pol(CONC), {"concurrent_requests": 3.0}))
    assert "concurrent_requests 3.00/replica (total 3.00, target 2) → 2" in d.reason
    assert "scale up 1 → 2" in d.reason
    d, _ = decide(ctx(pol(CONC), {"concurrent_requests": None}, current=2))
    assert "no data for concurrent_requests" in d.reason and "stay at 2" in d.reason


@dataclass
class Run:
    """Drive decide() with a fake clock: the store's count follows each decision at once."""

    policy: AutoscalingPolicy
    current: int = 1
    state: PolicyState = field(default_factory=PolicyState)
    decisions: list[Decision] = field(default_factory=list)

    def step(self, now: float, total: float, traffic: Traffic = BUSY, panic: float | None = None) -> int:
        d, self.state = decide(ctx(self.policy, {"concurrent_requests": total}, current=self.current,
                                   traffic=traffic, now=now, state=self.state,
                                   panic={"concurrent_requests": panic} if panic is not None else None))
        self.decisions.append(d)
        self.current = d.desired
        return d.desired

    def changes(self) -> int:
        return sum(d.changed for d in self.decisions)


def ticks(start: float, stop: float, every: float = 1.0) -> Iterable[float]:
    t = start
    while t < stop:
        yield t
        t += every


def test_step_up_after_the_up_window_and_down_after_the_down_window() -> None:
    run = Run(pol(CONC, scale_up_window_s=10.0, scale_down_window_s=30.0))
    for t in ticks(0, 10):
        run.step(t, 1.0)  # ceil(1/2) = 1: steady at 1
    # load steps to 8 in flight at t=10: ceil(8/2) = 4, but the up window keeps the lowest of 10 s
    counts = {t: run.step(t, 8.0) for t in ticks(10, 25)}
    assert counts[19.0] == 1  # [9, 19] still holds the rec 1 of t=9
    assert counts[20.0] == 4  # [10, 20]: all 4 → scale to 4
    # load stops at t=25 (0.5 in flight → ceil(0.25) = 1): down window of 30 s holds 4 until t=54
    counts = {t: run.step(t, 0.5) for t in ticks(25, 60)}
    assert counts[54.0] == 4  # [24, 54] still holds the 4 of t=24
    assert counts[55.0] == 1  # [25, 55]: highest is 1
    assert run.changes() == 2  # one up, one down


def test_saw_tooth_load_does_not_flap() -> None:
    # 10 s of 8 in flight, 10 s of 1, repeated: the down window (60 s) spans a whole period
    run = Run(pol(CONC, scale_up_window_s=0.0, scale_down_window_s=60.0))
    for t in ticks(0, 200):
        run.step(t, 8.0 if int(t // 10) % 2 == 0 else 1.0)
    assert run.changes() == 1  # up to ceil(8/2) = 4 once, never down while the teeth continue
    assert run.current == 4


def test_saw_tooth_flaps_without_a_down_window() -> None:
    # the same load with symmetric 0 s windows flaps: that is what the down window is for
    run = Run(pol(CONC, scale_up_window_s=0.0, scale_down_window_s=0.0))
    for t in ticks(0, 200):
        run.step(t, 8.0 if int(t // 10) % 2 == 0 else 1.0)
    assert run.changes() == 20  # 10 periods x (up + down)


def test_panic_skips_the_up_window_and_is_bounded_by_the_rate_limit() -> None:
    run = Run(pol(CONC, scale_up_window_s=60.0, max_replicas=50), current=2)
    run.step(0.0, 4.0)  # ceil(4/2) = 2: steady at 2
    # 40 in flight over the panic window on 2 Ready replicas (capacity 2x2 = 4): 40 >= 2x4 → panic.
    # rec ceil(40/2) = 20; the rate limit caps it at max(ceil(2x2), 2+4) = 6
    d = run.step(1.0, 40.0, panic=40.0)
    assert d == 6 and run.decisions[-1].panic
    assert "panic" in run.decisions[-1].reason and "rate limit" in run.decisions[-1].reason


def test_in_a_panic_the_short_window_sets_the_count() -> None:
    # a step from 0 to 8 in flight: the 10 s window's mean is still 1.6 (rec ceil(1.6/2) = 1), the
    # 2 s panic window already reads 8 ≥ 2 x (1 Ready x 2) → panic, rec ceil(8/2) = 4
    run = Run(pol(CONC, scale_up_window_s=60.0))
    assert run.step(0.0, 1.6, panic=8.0) == 4 and run.decisions[-1].panic


def test_without_panic_the_up_window_holds() -> None:
    run = Run(pol(CONC, scale_up_window_s=60.0, max_replicas=50), current=2)
    run.step(0.0, 4.0)  # rec 2
    # 7 in flight: 7 < 2x(2x2) = 8: no panic, and the up window's lowest is 2
    assert run.step(1.0, 7.0, panic=7.0) == 2


def test_scale_to_zero_after_the_grace_and_back() -> None:
    run = Run(pol(CONC, min_replicas=0, scale_to_zero_grace_s=30.0, scale_down_window_s=10.0), current=2)
    run.step(0.0, 4.0)  # ceil(4/2) = 2
    for t in ticks(1, 31):
        run.step(t, 0.0, IDLE)  # idle from t=1
    assert run.current == 1  # no load: 1 kept (down window 10 s let 2 → 1 at t=11)
    assert run.step(31.0, 0.0, IDLE) == 0  # 31 - 1 = 30 s idle = grace → 0
    assert run.step(40.0, 0.0, IDLE) == 0
    # a request arrives and is held: activation at once
    assert run.step(41.0, 1.0, Traffic(0.0, 1.0, 1)) == 1
