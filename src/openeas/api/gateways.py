"""``GET /api/v1/gateways``: every gateway registered in the store's gateway registry (schema
v14, openeas.kernel.fleet), live ones first: id, advertised URL, host, pid, the routing version
it applied and its lag behind the store's, heartbeat age (database clock) and whether it is live.
``openeas gateways`` shows the same."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI

from openeas.api.control import ControlPlane
from openeas.kernel.fleet import LIVE_S
from openeas.store import Store


def gateways_view(store: Store, live_s: float = LIVE_S) -> dict[str, Any]:
    recs, now, version = store.gateways()
    rows = [r.to_dict(now, version, live_s) for r in recs]
    rows.sort(key=lambda r: (not r["live"], r["started_at"], r["id"]))
    return {
        "routing_version": version,
        "live": sum(bool(r["live"]) for r in rows),
        "live_bound_s": live_s,
        "gateways": rows,
    }


def add_gateway_routes(app: FastAPI, cp: ControlPlane, auth: list[Any]) -> None:
    @app.get("/api/v1/gateways", dependencies=auth, tags=["gateways"])
    async def gateways() -> dict[str, Any]:
        """Every registered gateway: URL, host, pid, applied routing version, heartbeat age, live."""
        return await asyncio.to_thread(gateways_view, cp.store)
