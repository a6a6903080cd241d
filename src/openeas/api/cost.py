"""The control plane's cost API: ``/api/v1/cost/...`` (docs/cost.md).

- ``POST /api/v1/cost/estimate`` ``{"spec": {...}, "traffic": {...}}``: the monthly estimate of a
  spec (traffic optional), priced by the server's catalog;
- ``GET /api/v1/services/{name}/cost``: the same for a deployed service's current version;
- ``GET /api/v1/cost/catalog``: the catalog the server prices by.

The catalog is ``openeas server --catalog FILE`` (``OPENEAS_CATALOG``), else the shipped one.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, Request

from openeas.cost import Catalog, estimate, load_catalog, parse_traffic
from openeas.errors import SpecError
from openeas.spec import parse_spec
from openeas.spec.load import parse_json
from openeas.spec.models import ServiceSpec

ENV_CATALOG = "OPENEAS_CATALOG"  # set by `openeas server --catalog FILE`
MAX_BODY_BYTES = 16 * 1024 * 1024


def server_catalog() -> Catalog:
    """The catalog this server prices by (read on each call: edits apply without a restart)."""
    return load_catalog(os.environ.get(ENV_CATALOG) or None)


def cost_of(spec: ServiceSpec) -> dict[str, Any]:
    """The baseline estimate of a spec, for dry-run and describe; an unreadable catalog is named."""
    try:
        return estimate(spec, server_catalog()).as_dict()
    except SpecError as exc:
        return {"error": "; ".join(exc.errors)}


def add_cost_routes(app: FastAPI, cp: Any, auth: list[Any]) -> None:
    @app.post("/api/v1/cost/estimate", dependencies=auth, tags=["cost"])
    async def cost_estimate(request: Request) -> dict[str, Any]:
        """The monthly estimate of ``spec`` under ``traffic`` (each line with its arithmetic)."""
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise SpecError([f"body: larger than {MAX_BODY_BYTES} bytes (16 MiB)"])
        try:
            data = parse_json(body)
        except ValueError:
            raise SpecError(["body: not valid JSON"]) from None
        if not isinstance(data, dict) or not isinstance(data.get("spec"), dict):
            raise SpecError(['spec: required, the service spec ({"spec": {...}, "traffic": {...}})'])
        errors: list[str] = []
        spec = traffic = None
        try:
            spec = parse_spec(data["spec"])
        except SpecError as exc:
            errors += exc.errors
        if data.get("traffic") is not None:
            try:
                traffic = parse_traffic(data["traffic"])
            except SpecError as exc:
                errors += exc.errors
        if errors or spec is None:
            raise SpecError(errors)
        return estimate(spec, server_catalog(), traffic).as_dict()

    @app.get("/api/v1/services/{name}/cost", dependencies=auth, tags=["cost"])
    def service_cost(name: str) -> dict[str, Any]:
        """The baseline estimate of a service's current version, and how its price was mapped."""
        row = cp.store.get_service(name)
        spec = cp.store.version_spec(name, row.current_version)
        return {"name": name, **estimate(spec, server_catalog()).as_dict()}

    @app.get("/api/v1/cost/catalog", dependencies=auth, tags=["cost"])
    def catalog() -> dict[str, Any]:
        """The catalog the server prices by."""
        return server_catalog().model_dump()
