"""What a service version publishes for routing: its route-settings record.

The control plane has the typed spec; it computes the record here when a version is written and
the store keeps it with the version (``versions.route``). The gateway reads only that record
(:mod:`openeas.gateway.routing.source`), so the spec's shape, and pydantic, stay out of the data plane.
"""

from __future__ import annotations

from openeas.kernel.queue import (
    DEFAULT_ATTEMPT_TIMEOUT_S,
    DEFAULT_MAX_DELIVERY,
    DEFAULT_MAX_LENGTH,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MAX_RESULT_BYTES,
    DEFAULT_RESULT_TTL_S,
    DEFAULT_WINDOW,
    QueueSettings,
)
from openeas.kernel.routing import (
    DEFAULT_BALANCER,
    DEFAULT_HOLD_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HELD,
    RouteSettings,
)
from openeas.spec.models import ServiceSpec


def route_settings(spec: ServiceSpec) -> RouteSettings:
    """The routing settings of ``spec`` (units as in RouteSettings: seconds and bytes)."""
    rpc = spec.metadata.rpc
    return RouteSettings(
        timeout_s=rpc.keepalive / 1000.0 if rpc.keepalive else None,  # EAS keepalive is in ms
        max_body_bytes=rpc.max_body_bytes or DEFAULT_MAX_BODY_BYTES,
        balancer=spec.metadata.balancer or DEFAULT_BALANCER,
        resend_unanswered=rpc.resend_unanswered,
        # EAS's "requests waiting for a replica" bound: the gateway's hold queue per service.
        max_held=rpc.max_queue_size or DEFAULT_MAX_HELD,
        hold_timeout_s=rpc.hold_timeout_ms / 1000.0 if rpc.hold_timeout_ms else DEFAULT_HOLD_TIMEOUT_S,
        rate_limit=float(rpc.rate_limit or 0),  # EAS: 0 = no limit
        queue=queue_settings(spec) if spec.is_async else None,
    )


def queue_settings(spec: ServiceSpec) -> QueueSettings:
    """An async service's queue from its spec's ``queue`` block (defaults: docs/async.md)."""
    q = spec.queue
    rpc = spec.metadata.rpc
    workers = (rpc.model_extra or {}).get("worker_threads")
    window = (q.window if q else None) or (int(workers) if isinstance(workers, int) and workers > 0 else None)
    timeout_ms = (q.attempt_timeout_ms if q else None) or rpc.keepalive
    kib = 1024
    return QueueSettings(
        max_delivery=(q.max_delivery if q else None) or DEFAULT_MAX_DELIVERY,
        window=window or DEFAULT_WINDOW,
        max_length=(q.source.max_length if q else None) or DEFAULT_MAX_LENGTH,
        max_payload_bytes=(q.source.max_payload_size_kb * kib if q and q.source.max_payload_size_kb else None)
        or DEFAULT_MAX_PAYLOAD_BYTES,
        max_result_bytes=(q.sink.max_payload_size_kb * kib if q and q.sink.max_payload_size_kb else None)
        or DEFAULT_MAX_RESULT_BYTES,
        result_ttl_s=float((q.result_ttl_s if q else None) or DEFAULT_RESULT_TTL_S),
        attempt_timeout_s=timeout_ms / 1000.0 if timeout_ms else DEFAULT_ATTEMPT_TIMEOUT_S,
    )
