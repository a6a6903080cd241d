"""``panic_window: 0`` means the latest reading (docs/autoscaling.md), through the shipped stats
source: a spec's policy, the control plane's `GatewayStats` fed the gateway's datagrams on a fake
clock, `TrafficSource` (what the autoscaler reads) and `decide`. A zero-width window used to find
no data, so a spec asking for the fastest panic never panicked."""

from __future__ import annotations

import pytest

from openeas.autoscaler import DecisionContext, Observation, PolicyState, Traffic, decide
from openeas.autoscaler.metrics import ServiceView, TrafficSource
from openeas.spec import parse_spec
from openeas.spec.autoscaling import AutoscalingPolicy
from openeas.telemetry.gateway_stats import SEND_INTERVAL_S, GatewayStats, ServiceSample

WALL = 1_704_276_000.0


def policy(panic_window: str, metric: str) -> AutoscalingPolicy:
    spec = parse_spec(
        {
            "metadata": {"name": "burst", "instance": 2},
            "containers": [{"command": "serve --port 8000", "port": 8000}],
            "autoscaling": {
                "metric": metric,
                "target": 2,
                "min_replicas": 1,
                "max_replicas": 20,
                "metric_window": "60s",
                "panic_window": panic_window,
            },
        }
    )
    p = spec.autoscaling_policy()
    assert p is not None
    return p


def fed_stats(burst_at: float, now: float) -> GatewayStats:
    """A gateway reporting every 0.2 s: idle (1 in flight, 1 arrival per report) until
    ``burst_at``, then 40 in flight and 40 arrivals per report."""
    stats = GatewayStats(lambda: now)
    t, arrivals = 0.0, 0
    while t <= now + 1e-9:
        busy = t >= burst_at
        arrivals += 40 if busy else 1
        stats.observe("gw", {"burst": ServiceSample(arrivals, 40 if busy else 1, 0)}, t, uptime_s=t)
        t = round(t + SEND_INTERVAL_S, 6)
    return stats


@pytest.mark.parametrize(
    ("metric", "expected_panic_total"),
    [
        # The latest reading: 40 in flight now (the 60 s window's mean is still ~1).
        pytest.param("concurrent_requests", 40.0, id="concurrency-latest-in-flight"),
        # The last report interval: 40 arrivals in 0.2 s = 200 req/s.
        pytest.param("qps", 200.0, id="qps-over-the-last-report"),
    ],
)
def test_panic_window_zero_reads_the_latest_value_and_panics(metric: str, expected_panic_total: float) -> None:
    p = policy("0", metric)
    assert p.panic_window_s == 0.0
    now = 60.0
    stats = fed_stats(burst_at=now - 0.1, now=now)  # a burst 0.1 s old: only the latest report has it
    src = TrafficSource(stats)
    view = ServiceView(name="burst", policy=p, replicas=())
    m = p.metrics[0]
    total = src.total(view, m, p.metric_window_s, now)
    panic_total = src.total(view, m, p.panic_window_s, now)
    assert panic_total == pytest.approx(expected_panic_total)
    assert total is not None and total < expected_panic_total / 5
    ctx = DecisionContext(
        policy=p,
        now=now,
        wall=WALL,
        current=2,
        ready=2,
        observations={m.key: Observation(total, panic_total)},
        traffic=Traffic(arrival_rate=1.0, in_flight=1.0, held=0),
        state=PolicyState(),
    )
    decision, _ = decide(ctx)
    # 2 Ready replicas take 2 x 2 = 4; the latest reading is >= 2 x 4 (the threshold): panic, up.
    assert decision.panic and decision.desired > 2, decision


def test_no_report_is_still_no_data_with_a_zero_window() -> None:
    stats = GatewayStats(lambda: 0.0)
    assert stats.mean_in_flight("burst", 0.0, 5.0) is None
    assert stats.arrival_rate("burst", 0.0, 5.0) is None
