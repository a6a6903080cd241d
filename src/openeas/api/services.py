"""The services resource: ``/api/v1/services[/{name}[/scale|stop|start|autoscaling|events|
call-info]]`` and ``/api/v1/dry-run``. Each route writes desired state into the store and wakes
the reconciler, or reads a view; none starts or stops a process itself.

Create and update read the spec body themselves (bounded, depth-checked: a 400 naming the field,
never a 422) and check what the spec would read on this host before accepting it."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Query, Request
from pydantic import Field

from openeas.api.control import ControlPlane, iso_time
from openeas.api.cost import cost_of
from openeas.api.errors import FORCE_HELP, responses
from openeas.api.groups import check_spec_group, check_traffic, join_spec_group
from openeas.api.openapi import SPEC_BODY
from openeas.errors import NotFound, SpecError
from openeas.kernel.states import ServiceState, desired_replicas
from openeas.spec import ServiceSpec, parse_spec
from openeas.spec.load import parse_json
from openeas.spec.models import MAX_REPLICAS
from openeas.spec.numbers import CheckedNumbers
from openeas.storage.warmup_file import check_local_warmup
from openeas.store.groups import GroupStore

MAX_SPEC_BODY_BYTES = 16 * 1024 * 1024
"""Largest spec body the API reads (16 MiB; a container's env may hold 1 MiB, a command 128 KiB)."""


class ScaleBody(CheckedNumbers):
    replicas: int = Field(ge=0, le=MAX_REPLICAS, description=f"desired replica count, 0..{MAX_REPLICAS}")


async def spec_body(request: Request) -> Any:
    """The request's JSON body, at most ``MAX_SPEC_BODY_BYTES``."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SPEC_BODY_BYTES:
            raise SpecError([f"spec: request body larger than {MAX_SPEC_BODY_BYTES} bytes (16 MiB)"])
    try:
        return parse_json(bytes(body))  # depth-checked: a SpecError, never a RecursionError
    except ValueError:
        raise SpecError(["spec: request body is not valid JSON"]) from None


async def valid_spec(cp: ControlPlane, request: Request) -> ServiceSpec:
    """The body as a valid spec whose host paths are allowed and whose local warmup file is usable."""
    spec = parse_spec(await spec_body(request))
    cp.check_host_paths(spec)  # before anything on the host is read (the warmup file)
    if errors := await asyncio.to_thread(check_local_warmup, spec.warm_up_data_path):
        raise SpecError(errors)
    return spec


def add_spec_routes(app: FastAPI, cp: ControlPlane, auth: list[Any]) -> None:
    """Create, update and dry-run: the routes that take a spec."""
    groups = GroupStore(cp.store)

    @app.post("/api/v1/services", status_code=201, dependencies=auth, openapi_extra=SPEC_BODY,
              responses=responses(400, 401, 409))  # fmt: skip
    async def create_service(request: Request) -> dict[str, Any]:
        spec = await valid_spec(cp, request)
        check_spec_group(groups, cp.store, spec)
        cp.store.create_service(spec)
        join_spec_group(groups, spec)
        cp.wake()
        return cp.detail(spec.name)

    @app.post("/api/v1/dry-run", dependencies=auth, openapi_extra=SPEC_BODY,
              responses=responses(400, 401, 409))  # fmt: skip
    async def dry_run(request: Request) -> dict[str, Any]:
        """Validate a spec and say what deploying it would do (create or update, the runtime and
        why), changing nothing."""
        spec = await valid_spec(cp, request)
        return {**cp.dry_run(spec), "cost": cost_of(spec)}  # the monthly estimate (api/cost.py)

    @app.put("/api/v1/services/{name}", dependencies=auth, openapi_extra=SPEC_BODY,
             responses=responses(400, 401, 404, 409))  # fmt: skip
    async def update_service(name: str, request: Request) -> dict[str, Any]:
        spec = await valid_spec(cp, request)
        if spec.name != name:
            raise SpecError(
                [f"metadata.name: '{spec.name}' does not match the service in the URL ('{name}')"]
            )
        check_spec_group(groups, cp.store, spec)
        cp.store.add_version(spec)
        join_spec_group(groups, spec)
        cp.wake()
        return cp.detail(name)


def add_service_routes(app: FastAPI, cp: ControlPlane, auth: list[Any]) -> None:
    """The services resource: list, describe, delete, scale, stop, start (and its views)."""
    groups = GroupStore(cp.store)
    add_spec_routes(app, cp, auth)

    @app.get("/api/v1/services", dependencies=auth)
    def list_services() -> dict[str, Any]:
        return {"services": [cp.summary(s) for s in cp.store.list_services()]}

    @app.get("/api/v1/services/{name}", dependencies=auth)
    def describe(name: str) -> dict[str, Any]:
        return cp.detail(name)

    @app.delete("/api/v1/services/{name}", dependencies=auth, responses=responses(409))
    def delete_service(name: str, force: bool = Query(False, description=FORCE_HELP)) -> dict[str, Any]:
        cp.store.get_service(name)
        check_traffic(groups, name, force, "delete")
        event = ("Deleting", "delete requested; stopping replicas")
        cp.store.update_service(name, state=ServiceState.DELETING, event=event)
        cp.wake()
        return {"deleted": name}

    @app.post("/api/v1/services/{name}/scale", dependencies=auth)
    def scale(name: str, body: ScaleBody) -> dict[str, Any]:
        message = f"desired replicas set to {body.replicas}"
        return cp.change(name, "Scaled", message, desired_replicas=body.replicas)

    @app.post("/api/v1/services/{name}/stop", dependencies=auth, responses=responses(409))
    def stop(name: str, force: bool = Query(False, description=FORCE_HELP)) -> dict[str, Any]:
        cp.store.get_service(name)
        check_traffic(groups, name, force, "stop")
        message = "service stopped; replicas are being stopped"
        return cp.change(name, "Stopped", message, state=ServiceState.STOPPED)

    @app.post("/api/v1/services/{name}/start", dependencies=auth)
    def start(name: str) -> dict[str, Any]:
        return cp.change(name, "Started", "service started", state=ServiceState.RUNNING)

    add_service_views(app, cp, auth)


def add_service_views(app: FastAPI, cp: ControlPlane, auth: list[Any]) -> None:
    """What a service is doing: its autoscaler, its events, how to call it."""

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

    @app.get("/api/v1/services/{name}/events", dependencies=auth)
    def events(
        name: str, limit: int = Query(100, ge=1, le=10_000, description="newest N events")
    ) -> dict[str, Any]:
        cp.store.get_service(name)
        return {
            "events": [
                {"time": iso_time(e.time), "type": e.type, "reason": e.reason, "message": e.message,
                 "replica": e.replica}
                for e in cp.store.events(name, limit)
            ]
        }  # fmt: skip

    @app.get("/api/v1/services/{name}/call-info", dependencies=auth)
    def call_info(name: str) -> dict[str, Any]:
        cp.store.get_service(name)
        return {"endpoint": cp.endpoint(name), "token": cp.store.token(name)}
