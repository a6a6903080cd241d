"""Owns the answers the gateway gives itself, outside ``/api/predict``: ``GET /metrics``
(Prometheus text), ``GET /healthz`` and a 404 that says where the routes are. A pure function of
the request's method and path (and the metrics it renders); no routing, no replica.
"""

from __future__ import annotations

from openeas.gateway.errors import GatewayError, plain_response
from openeas.gateway.telemetry.metrics import GatewayMetrics

_PROMETHEUS_TEXT = b"text/plain; version=0.0.4"
_HEALTHY = b'{"status":"ok"}'


def local_answer(method: bytes, path: bytes, metrics: GatewayMetrics, *, close: bool) -> bytes:
    """The complete response to a request for ``path`` (no query); raises `GatewayError` (404)."""
    if method == b"GET":
        if path == b"/metrics":
            return plain_response(200, metrics.exposition(), _PROMETHEUS_TEXT, close=close)
        if path == b"/healthz":
            return plain_response(200, _HEALTHY, b"application/json", close=close)
    shown = path.decode("latin-1")
    raise GatewayError(404, "not_found", f"no route for {shown!r}: use /api/predict/<service>[/path]")
