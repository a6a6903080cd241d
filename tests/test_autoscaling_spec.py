"""The autoscaling spec: both EAS shapes and the field guide's block normalise into one policy;
nonsense is refused with the field named."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from openeas.errors import SpecError
from openeas.spec import parse_spec
from openeas.spec.autoscaling import AutoscalingPolicy, Defaults, parse_duration

BASE: dict[str, Any] = {
    "metadata": {"name": "svc", "instance": 2},
    "containers": [{"command": "serve --port 8000", "port": 8000}],
}


def spec_with(**blocks: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(blocks)
    return data


def policy(**blocks: Any) -> AutoscalingPolicy:
    p = parse_spec(spec_with(**blocks)).autoscaling_policy()
    assert p is not None
    return p


FIELD_GUIDE = {
    "metric": "concurrent_requests",
    "target": 12,
    "min_replicas": 2,
    "max_replicas": 10,
    "scale_up_stabilization_window": "60s",
    "scale_down_stabilization_window": "600s",
    "rules": [
        {"name": "business-hours", "cron": "0 9 * * MON-FRI", "min_replicas": 3, "max_replicas": 20},
        {"name": "off-hours", "cron": "0 19 * * MON-FRI", "min_replicas": 1, "max_replicas": 5},
        {"name": "weekends", "cron": "0 0 * * SAT,SUN", "min_replicas": 0, "max_replicas": 3},
    ],
}


def test_field_guide_block_as_written_in_the_issue() -> None:
    p = policy(autoscaling=FIELD_GUIDE)
    assert p.source == "autoscaling"
    assert [(m.kind, m.target) for m in p.metrics] == [("concurrent_requests", 12.0)]
    assert (p.min_replicas, p.max_replicas) == (2, 10)
    assert (p.scale_up_window_s, p.scale_down_window_s) == (60.0, 600.0)
    assert [(r.name, r.min_replicas, r.max_replicas, r.seconds_first) for r in p.rules] == [
        ("business-hours", 3, 20, False),
        ("off-hours", 1, 5, False),
        ("weekends", 0, 3, False),
    ]
    assert all(r.timezone == "UTC" for r in p.rules)
    # untouched defaults come from Defaults (each documented with its reason)
    assert p.tolerance == Defaults.TOLERANCE and p.scale_to_zero_grace_s == Defaults.SCALE_TO_ZERO_GRACE_S


def test_eas_block_with_behavior_and_on_zero() -> None:
    p = policy(
        autoscaler={
            "min": 0,
            "max": 8,
            "scaleStrategies": [{"metricName": "qps", "threshold": 10}, {"metricName": "cpu", "threshold": 80}],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 5},
                "scaleDown": {"stabilizationWindowSeconds": 120},
                "onZero": {"scaleDownGracePeriodSeconds": 30, "scaleUpActivationReplicas": 2},
            },
        }
    )
    assert p.source == "autoscaler"
    assert [(m.kind, m.target) for m in p.metrics] == [("qps", 10.0), ("cpu", 80.0)]
    assert (p.min_replicas, p.max_replicas, p.scale_up_window_s, p.scale_down_window_s) == (0, 8, 5.0, 120.0)
    assert (p.scale_to_zero_grace_s, p.activation_replicas) == (30.0, 2)


def test_eas_older_map_form_and_defaults() -> None:
    p = policy(autoscaler={"min": 1, "max": 4, "strategies": {"qps": 10}})
    assert [(m.kind, m.target) for m in p.metrics] == [("qps", 10.0)]
    # EAS without behavior: HPA/EAS defaults
    assert (p.scale_up_window_s, p.scale_down_window_s) == (Defaults.SCALE_UP_WINDOW_S, Defaults.SCALE_DOWN_WINDOW_S)


def test_eas_custom_metric_names() -> None:
    p = policy(
        autoscaler={
            "min": 1,
            "max": 4,
            "scaleStrategies": [
                {"metricName": "vllm:num_requests_running", "threshold": 4},
                {"metricName": "custom[testserver_requests_in_flight]", "threshold": 2},
            ],
        }
    )
    assert [m.key for m in p.metrics] == ["custom:vllm:num_requests_running", "custom:testserver_requests_in_flight"]


def test_cron_scaler_alone_sets_the_count_at_each_job() -> None:
    p = policy(
        cronScaler={
            "ScaleJobs": [
                {"Name": "up", "Schedule": "0 0 9 * * MON-FRI", "TargetSize": 5, "TimeZone": "Asia/Shanghai"},
                {"Name": "down", "Schedule": "0 0 19 * * MON-FRI", "TargetSize": 1},
            ],
            "ExcludeDates": ["2025-01-01", "* * * 25 12 *"],
        }
    )
    assert p.source == "cronScaler" and p.metrics == ()
    assert (p.min_replicas, p.max_replicas) == (2, 2)  # metadata.instance until a job fires
    up, down = p.rules
    assert (up.min_replicas, up.max_replicas, up.timezone, up.seconds_first) == (5, 5, "Asia/Shanghai", True)
    assert (down.min_replicas, down.max_replicas, down.timezone) == (1, 1, "UTC")
    assert up.exclude == ("2025-01-01", "* * * 25 12 *")


def test_cron_scaler_with_autoscaler_sets_the_floor() -> None:
    p = policy(
        autoscaler={"min": 1, "max": 4, "scaleStrategies": [{"metricName": "qps", "threshold": 10}]},
        cronScaler={"ScaleJobs": [{"Name": "peak", "Schedule": "0 0 9 * * *", "TargetSize": 6}]},
    )
    # TargetSize 6 > max 4: the rule's max is raised to 6 so the floor can hold
    assert [(r.min_replicas, r.max_replicas) for r in p.rules] == [(6, 6)]


def test_several_metrics_and_tuning_fields() -> None:
    p = policy(
        autoscaling={
            "metrics": [
                {"metric": "qps", "target": 5},
                {"metric": "custom", "target": 3, "custom": {"metric": "llamacpp:requests_processing", "aggregate": "max"}},
            ],
            "min_replicas": 0,
            "max_replicas": 3,
            "tolerance": 0.2,
            "metric_window": "500ms",
            "scale_to_zero_grace": "2m",
            "timezone": "Europe/Paris",
            "prescale_lead": 12,
        }
    )
    assert [(m.key, m.aggregate) for m in p.metrics] == [("qps", "avg"), ("custom:llamacpp:requests_processing", "max")]
    assert (p.tolerance, p.metric_window_s, p.scale_to_zero_grace_s, p.prescale_lead_s) == (0.2, 0.5, 120.0, 12.0)


def test_no_autoscaling_means_no_policy() -> None:
    assert parse_spec(spec_with()).autoscaling_policy() is None


def test_round_trip_keeps_what_was_written() -> None:
    data = spec_with(autoscaling={**FIELD_GUIDE, "future_field": {"x": 1}})
    out = parse_spec(data).to_dict()
    assert out["autoscaling"]["future_field"] == {"x": 1}
    assert out["autoscaling"]["rules"] == FIELD_GUIDE["rules"]
    assert out["autoscaling"]["scale_up_stabilization_window"] == 60  # "60s" → its validated value


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(60, 60), ("60s", 60), ("10m", 600), ("1h", 3600), ("500ms", 0.5), ("1.5s", 1.5), (" 30 ", 30)],
    ids=["int", "s", "m", "h", "ms", "fraction", "spaces"],
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


BAD = [
    ("min > max (field guide)", {"autoscaling": {"metric": "qps", "target": 1, "min_replicas": 5, "max_replicas": 2}},
     "autoscaling: min_replicas (5) must not exceed max_replicas (2)"),
    ("min > max (EAS)", {"autoscaler": {"min": 9, "max": 4}}, "autoscaler: min (9) must not exceed max (4)"),
    ("target 0", {"autoscaling": {"metric": "qps", "target": 0, "max_replicas": 2}},
     "autoscaling.target: input should be greater than 0"),
    ("negative threshold", {"autoscaler": {"max": 2, "scaleStrategies": [{"metricName": "qps", "threshold": -1}]}},
     "autoscaler.scaleStrategies[0].threshold: input should be greater than 0"),
    ("unknown metric", {"autoscaling": {"metric": "tps", "target": 1, "max_replicas": 2}},
     "autoscaling.metric: unknown metric 'tps'"),
    ("unknown EAS metric", {"autoscaler": {"max": 2, "scaleStrategies": [{"metricName": "latency", "threshold": 1}]}},
     "autoscaler.scaleStrategies[0].metricName: unknown metric 'latency'"),
    ("unknown metric in map form", {"autoscaler": {"max": 2, "strategies": {"tps": 3}}},
     "autoscaler.strategies: unknown metric 'tps'"),
    ("custom without name", {"autoscaling": {"metric": "custom", "target": 1, "max_replicas": 2}},
     "autoscaling: metric 'custom' needs custom"),
    ("target without metric", {"autoscaling": {"target": 1, "max_replicas": 2}}, "autoscaling: metric: is required"),
    ("metric without target", {"autoscaling": {"metric": "qps", "max_replicas": 2}}, "autoscaling: target: is required"),
    ("bad cron", {"autoscaling": {"max_replicas": 2, "rules": [{"name": "r", "cron": "0 25 * * *", "min_replicas": 1, "max_replicas": 2}]}},
     "autoscaling.rules[0].cron: '0 25 * * *' is not a valid cron expression"),
    ("cron with 4 fields", {"autoscaling": {"max_replicas": 2, "rules": [{"name": "r", "cron": "0 9 * *", "min_replicas": 1, "max_replicas": 2}]}},
     "autoscaling.rules[0].cron: '0 9 * *': a cron expression has 5 fields"),
    ("EAS schedule with 5 fields", {"cronScaler": {"ScaleJobs": [{"Name": "j", "Schedule": "0 9 * * *", "TargetSize": 1}]}},
     "cronScaler.ScaleJobs[0].Schedule: '0 9 * * *': EAS schedules have 6 fields, seconds first"),
    ("unknown time zone", {"cronScaler": {"ScaleJobs": [{"Name": "j", "Schedule": "0 0 9 * * *", "TargetSize": 1, "TimeZone": "Mars/Olympus"}]}},
     "cronScaler.ScaleJobs[0].TimeZone: unknown time zone 'Mars/Olympus'"),
    ("bad exclude date", {"cronScaler": {"ScaleJobs": [{"Name": "j", "Schedule": "0 0 9 * * *", "TargetSize": 1}], "ExcludeDates": ["Christmas"]}},
     "cronScaler.ExcludeDates: 'Christmas': an excluded date is YYYY-MM-DD"),
    ("rule min > max", {"autoscaling": {"max_replicas": 2, "rules": [{"name": "r", "cron": "0 9 * * *", "min_replicas": 3, "max_replicas": 2}]}},
     "autoscaling.rules[0]: min_replicas (3) must not exceed max_replicas (2)"),
    ("duplicate rule names", {"autoscaling": {"max_replicas": 2, "rules": [
        {"name": "r", "cron": "0 9 * * *", "min_replicas": 1, "max_replicas": 2},
        {"name": "r", "cron": "0 19 * * *", "min_replicas": 1, "max_replicas": 2}]}},
     "autoscaling: rules: names must be unique (r)"),
    ("bad duration", {"autoscaling": {"metric": "qps", "target": 1, "max_replicas": 2, "scale_down_stabilization_window": "soon"}},
     "autoscaling.scale_down_stabilization_window: 'soon' is not a duration"),
    ("tolerance 1", {"autoscaling": {"metric": "qps", "target": 1, "max_replicas": 2, "tolerance": 1}},
     "autoscaling.tolerance: input should be less than 1"),
    ("both blocks", {"autoscaler": {"max": 2}, "autoscaling": {"max_replicas": 2}},
     "spec: autoscaling: give either 'autoscaler' (EAS) or 'autoscaling', not both"),
]


@pytest.mark.parametrize(("blocks", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_nonsense_is_refused_naming_the_field(blocks: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with(**blocks))
    assert any(line.startswith(message) for line in err.value.errors), err.value.errors


def test_a_stored_version_with_a_metric_this_release_does_not_know_still_loads() -> None:
    from openeas.spec import parse_stored_spec
    from openeas.spec.models import STORED

    assert STORED == "stored"  # the context key spec/autoscaling.py reads
    data = spec_with(autoscaler={"min": 1, "max": 3, "scaleStrategies": [
        {"metricName": "rt[avg]", "threshold": 100}, {"metricName": "qps", "threshold": 5}]})
    with pytest.raises(SpecError):
        parse_spec(data)  # a new spec: refused, the field named
    p = parse_stored_spec(data).autoscaling_policy()
    assert p is not None and [m.key for m in p.metrics] == ["qps"]  # the unknown one is left out
