"""The control-plane HTTP API (FastAPI; OpenAPI at /docs and /openapi.json), composed of one
router per resource: services (api/services.py), versions, logs, groups, rollouts, batch, cost,
cache, stress; the error format and the admin check are api/errors.py's, the OpenAPI corrections
api/openapi.py's.

It only writes desired state into the store and wakes the reconciler; it never starts or stops a
process itself. Every error is `{"error": {"code", "message", "errors"?}}` with a precise message.
Invalid input is 400 (never FastAPI's 422), and the OpenAPI document says so: create and update
take the ServiceSpec JSON Schema as their request body.

`/metrics` needs the admin token like every `/api/v1` route (it names every service), unless the
server runs with `--public-metrics` (for a Prometheus that scrapes without credentials).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from openeas.api.archive import add_archive_routes
from openeas.api.bake import add_bake_routes
from openeas.api.batch import add_batch_routes
from openeas.api.cache import add_cache_routes
from openeas.api.coldstart import add_coldstart_routes
from openeas.api.control import ControlPlane
from openeas.api.cost import add_cost_routes
from openeas.api.errors import add_error_handlers, admin_check, responses
from openeas.api.evals import add_eval_routes
from openeas.api.gateways import add_gateway_routes
from openeas.api.groups import add_group_routes
from openeas.api.logs import add_log_routes
from openeas.api.openapi import document_openapi
from openeas.api.rollouts import add_rollout_routes
from openeas.api.services import MAX_SPEC_BODY_BYTES, add_service_routes
from openeas.api.stress import register as register_stress
from openeas.api.versions import MAX_VERSION, add_version_routes

__all__ = ["MAX_SPEC_BODY_BYTES", "MAX_VERSION", "create_app"]


def create_app(cp: ControlPlane, *, public_metrics: bool = False) -> FastAPI:
    """The API; ``public_metrics`` lets anyone who reaches the port read ``/metrics``."""
    app = FastAPI(
        title="OpenEAS control plane",
        version="0.1.0",
        description="Deploy, scale and observe model services. Auth: `Authorization: Bearer <admin token>`.",
    )
    add_error_handlers(app)
    auth: list[Any] = [Depends(admin_check(cp.admin_token))]
    add_group_routes(app, cp, auth)  # /api/v1/groups (api/groups.py)
    add_rollout_routes(app, cp, auth)  # /api/v1/groups/{name}/rollout (api/rollouts.py)
    add_eval_routes(app, cp, auth)  # /api/v1/eval (api/evals.py)
    add_cost_routes(app, cp, auth)  # /api/v1/cost/... (api/cost.py)
    add_cache_routes(app, cp, auth)  # /api/v1/cache... (api/cache.py)
    add_bake_routes(app, cp, auth)  # /api/v1/services/{name}/bake (api/bake.py)
    add_coldstart_routes(app, cp, auth)  # /api/v1/services/{name}/coldstart (api/coldstart.py)
    add_archive_routes(app, cp, auth)  # /api/v1/archive (api/archive.py)
    add_gateway_routes(app, cp, auth)  # /api/v1/gateways (api/gateways.py)
    add_health_routes(app, cp, [] if public_metrics else auth)
    add_service_routes(app, cp, auth)  # /api/v1/services, /api/v1/dry-run (api/services.py)
    add_version_routes(app, cp, auth)  # .../versions, .../rollback (api/versions.py)
    add_log_routes(app, cp, auth)  # .../logs (api/logs.py)
    wake_batch = lambda: (cp.batch_wake(), cp.wake())  # noqa: E731
    add_batch_routes(app, cp.store, auth, wake_batch, cp.check_host_paths, cp.request_file_problems)
    register_stress(app, cp, auth)  # /api/v1/stress, /api/v1/services/{name}/load (api/stress.py)
    document_openapi(app)
    return app


def add_health_routes(app: FastAPI, cp: ControlPlane, metrics_auth: list[Any]) -> None:
    """``/healthz`` (open) and ``/metrics`` (Prometheus text; ``metrics_auth`` guards it)."""

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        dependencies=metrics_auth,
        responses=responses(401) if metrics_auth else {},
    )
    def metrics() -> PlainTextResponse:
        """Prometheus text format: replicas by phase, desired replicas, restarts, cold starts."""
        return PlainTextResponse(cp.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}
