"""Telemetry the control plane exposes: Prometheus metrics of replicas and cold starts
(`control`), and the cold-start breakdown of a replica start (`coldstart`)."""

from openeas.telemetry.coldstart import COLD_START_SPANS, breakdown
from openeas.telemetry.control import ControlMetrics

__all__ = ["COLD_START_SPANS", "ControlMetrics", "breakdown"]
