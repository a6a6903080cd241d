"""Telemetry the control plane exposes: Prometheus metrics of replicas and cold starts
(`control`), the cold-start breakdown of a replica start (`coldstart`), and the gateways'
per-service counters over time windows (`gateway_stats`).

`ControlMetrics` is imported lazily: it needs the store (SQLAlchemy), and the gateway process
imports `openeas.telemetry.gateway_stats`, which must stay free of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openeas.telemetry.coldstart import COLD_START_SPANS, breakdown, phase_stats
from openeas.telemetry.gateway_stats import GatewayStats, ServiceSample

if TYPE_CHECKING:
    from openeas.telemetry.control import ControlMetrics

__all__ = ["COLD_START_SPANS", "ControlMetrics", "GatewayStats", "ServiceSample", "breakdown", "phase_stats"]


def __getattr__(name: str) -> Any:
    if name == "ControlMetrics":
        from openeas.telemetry.control import ControlMetrics

        return ControlMetrics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
