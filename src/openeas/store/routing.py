"""What a service version publishes for routing: its route-settings record.

The control plane has the typed spec; it computes the record here when a version is written and
the store keeps it with the version (``versions.route``). The gateway reads only that record
(:mod:`openeas.gateway.source`), so the spec's shape, and pydantic, stay out of the data plane.
"""

from __future__ import annotations

from openeas.gateway.source import StoreRoutingSource
from openeas.gateway.table import (
    DEFAULT_BALANCER,
    DEFAULT_HOLD_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HELD,
    RouteSettings,
)
from openeas.spec.models import ServiceSpec

# The reader moved to the gateway package; still importable from here for existing callers.
__all__ = ["StoreRoutingSource", "route_settings"]


def route_settings(spec: ServiceSpec) -> RouteSettings:
    """The routing settings of ``spec`` (units as in RouteSettings: seconds and bytes)."""
    rpc = spec.metadata.rpc
    return RouteSettings(
        timeout_s=rpc.keepalive / 1000.0 if rpc.keepalive else None,  # EAS keepalive is in ms
        max_body_bytes=rpc.max_body_bytes or DEFAULT_MAX_BODY_BYTES,
        balancer=DEFAULT_BALANCER,  # the spec has no balancer field yet
        resend_unanswered=rpc.resend_unanswered,
        # EAS's "requests waiting for a replica" bound: the gateway's hold queue per service.
        max_held=rpc.max_queue_size or DEFAULT_MAX_HELD,
        hold_timeout_s=rpc.hold_timeout_ms / 1000.0 if rpc.hold_timeout_ms else DEFAULT_HOLD_TIMEOUT_S,
        rate_limit=float(rpc.rate_limit or 0),  # EAS: 0 = no limit
    )
