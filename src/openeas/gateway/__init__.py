"""The gateway (data plane): auth → resolve → balance → proxy, with per-service metrics."""

from openeas.gateway.auth import AuthError, Credentials, authorize, eas_signature, verify_content_md5
from openeas.gateway.errors import GatewayError
from openeas.gateway.routing.balancers import (
    Balancer,
    UnknownBalancerError,
    balancer_names,
    create_balancer,
    register_balancer,
)
from openeas.gateway.routing.resolve import split_predict_path
from openeas.gateway.routing.table import FileRoutingSource, RoutingSource
from openeas.gateway.server import Gateway, serve
from openeas.gateway.telemetry.metrics import GatewayMetrics, ServiceMetrics, ServiceSnapshot

__all__ = [
    "AuthError",
    "Balancer",
    "Credentials",
    "FileRoutingSource",
    "Gateway",
    "GatewayError",
    "GatewayMetrics",
    "RoutingSource",
    "ServiceMetrics",
    "ServiceSnapshot",
    "UnknownBalancerError",
    "authorize",
    "balancer_names",
    "create_balancer",
    "eas_signature",
    "register_balancer",
    "serve",
    "split_predict_path",
    "verify_content_md5",
]
