"""The control-plane HTTP API (FastAPI; OpenAPI at /docs and /openapi.json).

It only writes desired state into the store and wakes the reconciler; it never starts or stops a
process itself. Every error is `{"error": {"code", "message", "errors"?}}` with a precise message.
Invalid input is 400 (never FastAPI's 422), and the OpenAPI document says so: create and update
take the ServiceSpec JSON Schema as their request body.

`/metrics` needs the admin token like every `/api/v1` route (it names every service), unless the
server runs with `--public-metrics` (for a Prometheus that scrapes without credentials).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.routing import Route

from openeas.api.batch import add_batch_routes
from openeas.api.cache import add_cache_routes
from openeas.api.control import ControlPlane, iso_time, not_deleting
from openeas.api.cost import add_cost_routes, cost_of
from openeas.api.evals import add_eval_routes
from openeas.api.groups import add_group_routes, check_spec_group, check_traffic, join_spec_group
from openeas.api.rollouts import add_rollout_routes
from openeas.api.stress import register as register_stress
from openeas.controller.warmup import check_warmup_file
from openeas.errors import NotFound, OpenEASError, SpecError
from openeas.kernel.states import ServiceState, desired_replicas
from openeas.spec import ServiceSpec, parse_spec
from openeas.spec.load import MAX_SPEC_DEPTH, parse_json
from openeas.spec.models import MAX_REPLICAS
from openeas.spec.numbers import CheckedNumbers
from openeas.store import same

MAX_SPEC_BODY_BYTES = 16 * 1024 * 1024
"""Largest spec body the API reads (16 MiB; a container's env may hold 1 MiB, a command 128 KiB)."""


class ErrorDetail(BaseModel):
    code: str = Field(description="e.g. invalid_spec, invalid_request, unauthorized, not_found, conflict")
    message: str
    errors: list[str] | None = Field(default=None, description="one `field.path: reason` line per problem")


class ErrorBody(BaseModel):
    error: ErrorDetail


class ScaleBody(CheckedNumbers):
    replicas: int = Field(ge=0, le=MAX_REPLICAS, description=f"desired replica count, 0..{MAX_REPLICAS}")


MAX_VERSION = 2**63 - 1
"""Largest version number a request may name (SQLite's INTEGER; any larger one is no version)."""


class RollbackBody(CheckedNumbers):
    version: int = Field(ge=1, le=MAX_VERSION, description="the version to make current again")


def _error(status: int, code: str, message: str, errors: list[str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if errors:
        body["errors"] = errors
    return JSONResponse({"error": body}, status_code=status)


def create_app(cp: ControlPlane, *, public_metrics: bool = False) -> FastAPI:
    """The API; ``public_metrics`` lets anyone who reaches the port read ``/metrics``."""
    app = FastAPI(
        title="OpenEAS control plane",
        version="0.1.0",
        description="Deploy, scale and observe model services. Auth: `Authorization: Bearer <admin token>`.",
    )

    @app.exception_handler(OpenEASError)
    async def _our_errors(_req: Request, exc: OpenEASError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, getattr(exc, "errors", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        lines = []
        for err in exc.errors():
            loc = [p for p in err["loc"] if p != "body"]
            where = ".".join(str(p) for p in loc) or "body"
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")  # our validators' own words
            lines.append(f"{where}: {msg.lower()}")
        return _error(400, "invalid_request", "; ".join(lines), lines)

    @app.exception_handler(HTTPException)
    async def _http_errors(req: Request, exc: HTTPException) -> JSONResponse:
        # FastAPI's own errors (a body it could not parse, an unknown route) in our error format.
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 400:
            message = (
                f"body: could not be parsed as JSON (not JSON, or nested deeper than {MAX_SPEC_DEPTH} levels)"
            )
        response = _error(exc.status_code, code, message, [message] if exc.status_code == 400 else None)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only the one route that matched
            methods = {
                m
                for r in app.routes
                if isinstance(r, Route) and r.methods and r.path_regex.match(req.url.path)
                for m in r.methods
                if m != "HEAD"
            }
            response.headers["Allow"] = ", ".join(sorted(methods))
        return response

    @app.exception_handler(RecursionError)
    async def _too_deep(_req: Request, _exc: RecursionError) -> JSONResponse:
        # A body nested too deep for the JSON parser (FastAPI parses non-spec bodies itself).
        msg = f"body: nested deeper than {MAX_SPEC_DEPTH} levels"
        return _error(400, "invalid_request", msg, [msg])

    def admin(request: Request) -> None:
        # `Bearer` with nothing after it is a missing token: HTTP clients trim the trailing
        # space of `Bearer ` (newer requests/urllib3 do), so the scheme may arrive alone.
        header = request.headers.get("authorization", "").strip()
        scheme, _, rest = header.partition(" ")
        token = rest.strip() if scheme.lower() == "bearer" else header
        if not token:
            raise _Unauthorized("missing admin token: send 'Authorization: Bearer <admin_token>'")
        if not same(token, cp.admin_token):
            raise _Unauthorized("wrong admin token")

    auth = [Depends(admin)]
    groups = add_group_routes(app, cp, auth).groups  # /api/v1/groups (api/groups.py)
    add_rollout_routes(app, cp, auth)  # /api/v1/groups/{name}/rollout (api/rollouts.py)
    add_eval_routes(app, cp, auth)  # /api/v1/eval (api/evals.py)
    add_cost_routes(app, cp, auth)  # /api/v1/cost/... (api/cost.py)
    add_cache_routes(app, cp, auth)  # /api/v1/cache... (api/cache.py)

    async def _spec_body(request: Request) -> Any:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_SPEC_BODY_BYTES:
                raise SpecError([f"spec: request body larger than {MAX_SPEC_BODY_BYTES} bytes (16 MiB)"])
        try:
            return parse_json(bytes(body))  # depth-checked: a SpecError, never a RecursionError
        except ValueError:
            raise SpecError(["spec: request body is not valid JSON"]) from None

    async def _valid_spec(request: Request) -> ServiceSpec:
        spec = parse_spec(await _spec_body(request))
        cp.check_host_paths(spec)  # before anything on the host is read (the warmup file)
        await asyncio.to_thread(_check_local_warmup, spec)
        return spec

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        dependencies=[] if public_metrics else auth,
        responses={} if public_metrics else _responses(401),
    )
    def metrics() -> PlainTextResponse:
        """Prometheus text format: replicas by phase, desired replicas, restarts, cold starts."""
        return PlainTextResponse(cp.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(
        "/api/v1/services",
        status_code=201,
        dependencies=auth,
        openapi_extra=SPEC_BODY,
        responses=_responses(400, 401, 409),
    )
    async def create_service(request: Request) -> dict[str, Any]:
        spec = await _valid_spec(request)
        check_spec_group(groups, cp.store, spec)
        cp.store.create_service(spec)
        join_spec_group(groups, spec)
        cp.wake()
        return cp.detail(spec.name)

    @app.post(
        "/api/v1/dry-run",
        dependencies=auth,
        openapi_extra=SPEC_BODY,
        responses=_responses(400, 401, 409),
    )
    async def dry_run(request: Request) -> dict[str, Any]:
        """Validate a spec and say what deploying it would do (create or update, the runtime and
        why), changing nothing."""
        spec = await _valid_spec(request)
        return {**cp.dry_run(spec), "cost": cost_of(spec)}  # the monthly estimate (api/cost.py)

    @app.put(
        "/api/v1/services/{name}",
        dependencies=auth,
        openapi_extra=SPEC_BODY,
        responses=_responses(400, 401, 404, 409),
    )
    async def update_service(name: str, request: Request) -> dict[str, Any]:
        spec = await _valid_spec(request)
        if spec.name != name:
            raise SpecError(
                [f"metadata.name: '{spec.name}' does not match the service in the URL ('{name}')"]
            )
        check_spec_group(groups, cp.store, spec)
        cp.store.add_version(spec)
        join_spec_group(groups, spec)
        cp.wake()
        return cp.detail(name)

    @app.get("/api/v1/services", dependencies=auth)
    def list_services() -> dict[str, Any]:
        return {"services": [cp.summary(s) for s in cp.store.list_services()]}

    @app.get("/api/v1/services/{name}", dependencies=auth)
    def describe(name: str) -> dict[str, Any]:
        return cp.detail(name)

    @app.delete("/api/v1/services/{name}", dependencies=auth, responses=_responses(409))
    def delete_service(name: str, force: bool = Query(False, description=FORCE_HELP)) -> dict[str, Any]:
        cp.store.get_service(name)
        check_traffic(groups, name, force, "delete")
        cp.store.update_service(
            name, state=ServiceState.DELETING, event=("Deleting", "delete requested; stopping replicas")
        )
        cp.wake()
        return {"deleted": name}

    @app.post("/api/v1/services/{name}/scale", dependencies=auth)
    def scale(name: str, body: ScaleBody) -> dict[str, Any]:
        return cp.change(
            name, "Scaled", f"desired replicas set to {body.replicas}", desired_replicas=body.replicas
        )

    @app.post("/api/v1/services/{name}/stop", dependencies=auth, responses=_responses(409))
    def stop(name: str, force: bool = Query(False, description=FORCE_HELP)) -> dict[str, Any]:
        cp.store.get_service(name)
        check_traffic(groups, name, force, "stop")
        return cp.change(
            name, "Stopped", "service stopped; replicas are being stopped", state=ServiceState.STOPPED
        )

    @app.post("/api/v1/services/{name}/start", dependencies=auth)
    def start(name: str) -> dict[str, Any]:
        return cp.change(name, "Started", "service started", state=ServiceState.RUNNING)

    @app.get("/api/v1/services/{name}/autoscaling", dependencies=auth)
    def autoscaling(name: str) -> dict[str, Any]:
        """The autoscaler: policy, each metric vs its target, desired vs Ready, the last
        decision's reason (also when it changed nothing), the cron rule in force and the next."""
        svc = cp.store.get_service(name)
        policy = cp.store.version_spec(name, svc.current_version).autoscaling_policy()
        view = cp.autoscaling(name, policy)
        if view is None:
            raise NotFound(f"service '{name}' has no autoscaling policy (spec: autoscaler or autoscaling)")
        return {"name": name, "desired_replicas": desired_replicas(svc.state, svc.desired_replicas), **view}

    @app.get("/api/v1/services/{name}/versions", dependencies=auth)
    def versions(name: str) -> dict[str, Any]:
        return {"versions": cp.versions(name)}

    @app.post("/api/v1/services/{name}/rollback", dependencies=auth)
    def rollback(name: str, body: RollbackBody) -> dict[str, Any]:
        not_deleting(cp.store, name)
        cp.store.rollback(name, body.version)
        cp.wake()
        return cp.detail(name)

    @app.get("/api/v1/services/{name}/events", dependencies=auth)
    def events(
        name: str, limit: int = Query(100, ge=1, le=10_000, description="newest N events")
    ) -> dict[str, Any]:
        cp.store.get_service(name)
        return {
            "events": [
                {
                    "time": iso_time(e.time),
                    "type": e.type,
                    "reason": e.reason,
                    "message": e.message,
                    "replica": e.replica,
                }
                for e in cp.store.events(name, limit)
            ]
        }

    @app.get("/api/v1/services/{name}/logs", dependencies=auth)
    def logs(
        name: str,
        replica: str | None = None,
        tail: int = Query(200, ge=1, le=100_000, description="last N lines of each replica's log"),
    ) -> dict[str, Any]:
        reps = cp.store.replicas(name)
        cp.store.get_service(name)
        if replica is not None:
            reps = [r for r in reps if r.id == replica]
            if not reps:
                raise NotFound(f"service '{name}' has no replica '{replica}'")
        return {"logs": [{"replica": r.id, "text": _tail(Path(r.log_path), tail)} for r in reps]}

    wake_batch = lambda: (cp.batch_wake(), cp.wake())  # noqa: E731
    add_batch_routes(app, cp.store, auth, wake_batch, cp.check_host_paths, cp.request_file_problems)

    @app.get("/api/v1/services/{name}/call-info", dependencies=auth)
    def call_info(name: str) -> dict[str, Any]:
        cp.store.get_service(name)
        return {"endpoint": cp.endpoint(name), "token": cp.store.token(name)}

    register_stress(app, cp, auth)  # /api/v1/stress, /api/v1/services/{name}/load (api/stress.py)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _document(base_openapi())
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
    return app


FORCE_HELP = "go ahead although the service carries, or recently carried, a group's traffic"

_HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}

SPEC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a PAI-EAS service JSON (unknown fields are kept)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ServiceSpec"}}},
    }
}

_STATUS_TEXT = {
    400: "invalid input: `{error: {code, message, errors}}`, one `field.path: reason` line per problem",
    401: "missing or wrong admin token",
    404: "no such service (or version, or replica)",
    409: "the service exists already, is being deleted, or carries (or recently carried) a group's "
    "traffic (the 48-hour rule: add force=true)",
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody, "description": _STATUS_TEXT[c]} for c in codes}


def _document(schema: dict[str, Any]) -> None:
    """Make the generated OpenAPI true: validation errors are 400 (FastAPI documents 422), every
    /api/v1 route may answer 401, a route with a service name 404; the ServiceSpec schema (and its
    parts) go into components for create and update."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    spec_schema = ServiceSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in spec_schema.pop("$defs", {}).items():
        components[name] = sub
    components["ServiceSpec"] = spec_schema
    container = components.get("Container", {}).get("properties", {})
    if "env" in container:  # EAS writes a list of {name, value}; a plain mapping is accepted too
        listed = container["env"]
        container["env"] = {
            "anyOf": [
                {k: v for k, v in listed.items() if k not in ("title", "description")},
                {
                    "type": "object",
                    "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                    "additionalProperties": {
                        "anyOf": [
                            {"type": "string", "pattern": "^[^\\u0000]*$"},
                            {"type": ["number", "boolean", "null"]},
                        ]
                    },
                },
            ],
            "title": listed.get("title", "Env"),
        }
    _json_schema_bounds(components)
    error_ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            had_422 = responses.pop("422", None) is not None
            wanted = []
            if had_422:
                wanted.append(400)
            if path.startswith("/api/"):
                wanted.append(401)
            if "{name}" in path:
                wanted.append(404)
            for code in wanted:
                responses.setdefault(str(code), {"description": _STATUS_TEXT[code], **error_ref})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    components.setdefault(
        "ErrorBody", ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    )


_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}


def _json_schema_bounds(node: Any) -> None:
    """Pydantic writes a bound on a union (`int | float`) as `gt`/`ge`: JSON Schema's names."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            if "anyOf" in n:
                for short, long in _BOUNDS.items():
                    if short in n:
                        n[long] = n.pop(short)
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)


def _check_local_warmup(spec: ServiceSpec) -> None:
    """A warmup file on this machine is checked now (a clear 400); one in object storage
    (``oss://``, ``s3://``...) is checked when a replica starts."""
    path = spec.warm_up_data_path
    if not path:
        return
    if path.startswith("file://"):
        path = path[len("file://") :]
    elif "://" in path:
        return
    try:
        check_warmup_file(path)
    except ValueError as exc:
        raise SpecError([f"warm_up_data_path: {exc}"]) from None


class _Unauthorized(OpenEASError):
    status = 401
    code = "unauthorized"


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
