"""The autoscaler: a pure decision (`policy.decide`) wrapped in guardrails and cron rules, fed by
collectors (`metrics`), run by an I/O loop (`loop`) that writes desired replica counts."""

from openeas.autoscaler.cron import CronBounds, active_rule, cron_bounds, next_firing
from openeas.autoscaler.policy import (
    Decision,
    DecisionContext,
    MetricReading,
    Observation,
    PolicyState,
    Traffic,
    decide,
)

__all__ = [
    "CronBounds",
    "Decision",
    "DecisionContext",
    "MetricReading",
    "Observation",
    "PolicyState",
    "Traffic",
    "active_rule",
    "cron_bounds",
    "decide",
    "next_firing",
]
