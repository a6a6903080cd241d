"""The idle-spend alarm (issue 24 §4): the field guide's story fires it, on an injected clock,
from the real autoscaler decide()."""

from __future__ import annotations

from pathlib import Path

import pytest

from openeas.api.idle import CHECK_INTERVAL_S, IdleWatch
from openeas.autoscaler.policy import DecisionContext, Observation, PolicyState, Traffic, decide
from openeas.cli import render
from openeas.cost import parse_catalog
from openeas.cost.idle import IDLE_FRACTION, IDLE_HOLD_S, IDLE_MIN_EXCESS, IdleState, is_idle, observe
from openeas.kernel.clock import FakeClock
from openeas.spec import parse_spec
from openeas.spec.autoscaling import AutoscalingPolicy, MetricTarget
from openeas.store import Store, stress_reports
from tests.harness import service_spec

QPS10 = MetricTarget(kind="qps", target=10)
POLICY = AutoscalingPolicy.model_validate(
    {"source": "autoscaling", "metrics": [QPS10], "min_replicas": 10, "max_replicas": 20}
)
T0 = 1_800_000_000.0
CATALOG = parse_catalog(
    {
        "currency": "RMB",
        "instance_types": [
            {
                "name": "a10",
                "cpu": 8,
                "memory_gb": 30,
                "gpu": {"kind": "A10", "count": 1},
                "price_per_hour": 5.0,
            }
        ],
    },
    "test",
)
A10 = 5.0  # RMB per replica-hour


def test_the_documented_defaults() -> None:
    assert (IDLE_FRACTION, IDLE_MIN_EXCESS, IDLE_HOLD_S, CHECK_INTERVAL_S) == (0.25, 2, 10800.0, 60.0)


@pytest.mark.parametrize(
    ("replicas", "needed", "idle"),
    [
        pytest.param(10, 1, True, id="field-guide-10-for-1"),
        pytest.param(8, 2, True, id="a-quarter-exactly"),
        pytest.param(8, 3, False, id="more-than-a-quarter"),
        pytest.param(2, 0, True, id="two-for-none"),
        pytest.param(1, 0, False, id="one-spare-is-headroom"),
        pytest.param(10, 10, False, id="busy"),
    ],
)
def test_is_idle(replicas: int, needed: int, idle: bool) -> None:
    assert is_idle(replicas, needed) is idle


def _decision(now: float, qps: float | None, state: PolicyState) -> tuple[int, int | None, PolicyState]:
    traffic = Traffic(arrival_rate=qps or 0.0, in_flight=0.1, held=0)
    ctx = DecisionContext(
        policy=POLICY, now=now, wall=now, current=10, ready=10,
        observations={QPS10.key: Observation(qps)}, traffic=traffic, state=state,
    )  # fmt: skip
    d, st = decide(ctx)
    return d.current, d.recommendation, st


def test_the_field_guide_story_fires_the_alarm_once_after_three_hours() -> None:
    """min_replicas 10 at 0.5 QPS off-peak, 10 QPS per replica: the load needs 1, 9 idle."""
    state, pstate, fired_at, last = IdleState(), PolicyState(), [], None
    for minute in range(0, 5 * 60 + 1):
        now = T0 + minute * 60
        current, need, pstate = _decision(now, 0.5, pstate)
        state, last, fire = observe(state, now, current, need, price_per_hour=A10, currency="RMB")
        if fire:
            fired_at.append(minute)
        if minute < 180:
            assert last is None, minute
    assert fired_at == [180]  # 3 h after the first idle decision; once per episode
    assert last is not None
    # 9 idle replicas x 5 RMB/h x 720 h = 32,400 RMB/month
    assert (last.replicas, last.needed, last.idle_replicas, last.monthly_cost) == (10, 1, 9, 32400.0)
    assert last.message(T0 + 5 * 3600) == (
        "10 replicas run, the load needs 1 (for 5.0 h): 9 idle replicas cost 9 x 5 RMB/h x 720 h = "
        "32,400.00 RMB/month; lower min_replicas"
    )


@pytest.mark.parametrize(
    ("qps_by_hour", "fires"),
    [
        # a busy hour (60 QPS: needs 6 of 10) breaks the episode: 2 h + 2 h never hold 3 h
        pytest.param([0.5, 0.5, 60, 0.5, 0.5], False, id="busy-hour-breaks-it"),
        # no data for an hour neither breaks nor counts as idle; the episode began at hour 0
        pytest.param([0.5, 0.5, None, 0.5, 0.5], True, id="no-data-is-not-zero"),
        pytest.param([None] * 5, False, id="never-data-never-fires"),
        pytest.param([30] * 5, False, id="needs-3-of-10-not-idle"),
    ],
)
def test_what_breaks_an_episode(qps_by_hour: list[float | None], fires: bool) -> None:
    state, pstate, fired = IdleState(), PolicyState(), False
    for hour, qps in enumerate(qps_by_hour):
        for minute in range(60):
            now = T0 + hour * 3600 + minute * 60
            current, need, pstate = _decision(now, qps, pstate)
            state, _, fire = observe(state, now, current, need, price_per_hour=A10, currency="RMB")
            fired = fired or fire
    assert fired is fires


def test_an_unpriced_service_still_alarms_and_says_so() -> None:
    _, idle, fire = observe(IdleState(since=T0), T0 + IDLE_HOLD_S, 10, 1, price_per_hour=None, currency="RMB")
    assert fire and idle is not None and idle.monthly_cost is None
    assert "its price is unknown (no catalog type)" in idle.message(T0 + IDLE_HOLD_S)


SAVES = "the simulator says min 1 / max 1 would save 32,400.00 RMB/month (the last 24 h of requests)"
UNKNOWN = (
    "what a better min/max would save is unknown: no capacity figure (a stress report with a "
    "saturation point: openeas stress), no measured cold start, no request counts in the last 24 h "
    "(the meter's request_usage)"
)


def _measure(store: Store) -> None:
    """A day of the field guide's off-peak (0.5 QPS) metered, a 30 s start, a stress report."""
    for h in range(1, 26):
        store.add_requests({"offpeak": 1800}, T0 - h * 3600)
    store.record_cold_start("offpeak", 1, "offpeak-r1", {"total_s": 30.0})
    report = {"id": "s1", "target": "offpeak", "status": "completed"}
    stress_reports.save(
        store,
        {**report, "saturation": {"found": True, "qps_per_replica": 12, "concurrency_per_replica": 1.2}},
    )


@pytest.mark.parametrize(
    ("measured", "saving", "gauge"),
    [
        # a fixed count of 10 at 0.5 QPS: 1 replica serves it as well (9 x 5 RMB/h x 720 h)
        pytest.param(True, SAVES, 32400.0, id="measured-saving"),
        pytest.param(False, UNKNOWN, None, id="nothing-measured-says-what-is-missing"),
    ],
)
def test_the_watch_records_one_warning_and_shows_it_in_ls_describe_and_metrics(
    tmp_path: Path, measured: bool, saving: str, gauge: float | None
) -> None:
    """The server's watch over a real store; the autoscaler's view is a hand-written fake that
    says what the field guide's service decides off-peak: 10 replicas, the load needs 1."""
    store = Store(tmp_path)
    spec = service_spec("offpeak", replicas=10)
    spec["cloud"] = {"computing": {"instance_type": "a10"}}
    store.create_service(parse_spec(spec))
    if measured:
        _measure(store)
    decision = {"current_replicas": 10, "recommendation": 1, "valid": True}
    clock = FakeClock()
    watch = IdleWatch(store, lambda name: {"decision": decision}, lambda: CATALOG, clock)
    for minute in range(0, 4 * 60, 1):
        watch.tick(T0 + minute * 60)
    [event] = [e for e in store.events("offpeak") if e.reason == "IdleSpend"]
    assert (
        event.type == "Warning"
        and "9 idle replicas cost 9 x 5 RMB/h x 720 h = 32,400.00 RMB/month" in event.message
        and event.message.endswith("; lower min_replicas; " + saving)
    )
    view = watch.view("offpeak")
    assert view is not None and (view["idle_replicas"], view["monthly_cost"], view["currency"]) == (
        9,
        32400.0,
        "RMB",
    )
    metrics = {(m.name, tuple(s.labels.items()), s.value) for m in watch.collect() for s in m.samples}
    assert ("openeas_idle_replicas", (("service", "offpeak"),), 9) in metrics
    assert ("openeas_idle_monthly_cost", (("service", "offpeak"), ("currency", "RMB")), 32400.0) in metrics
    savings = [v for name, _, v in metrics if name == "openeas_idle_saving_monthly"]
    assert savings == ([] if gauge is None else [gauge]) and view["saving_per_month"] == gauge
    decision.update(recommendation=8)  # busy again: the alarm is off
    watch.tick(T0 + 5 * 3600)
    assert watch.view("offpeak") is None
    # ls and describe print the line (the API's answer carries it as "idle")
    table = render.summary_grid({"name": "offpeak", "idle": view})
    with render.out.capture() as cap:
        render.out.print(table)
    assert "Idle spend" in cap.get() and "32,400.00 RMB/month" in cap.get()
    assert " ".join(saving.split()[:6]) in " ".join(cap.get().split())  # the what-if, wrapped
