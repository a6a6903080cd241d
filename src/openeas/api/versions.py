"""The versions resource: ``/api/v1/services/{name}/versions`` (each deploy or rollback makes
one) and ``/rollback`` (the spec of an earlier version, current again as a new version)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import Field

from openeas.api.control import ControlPlane, not_deleting
from openeas.spec.numbers import CheckedNumbers

MAX_VERSION = 2**63 - 1
"""Largest version number a request may name (SQLite's INTEGER; any larger one is no version)."""


class RollbackBody(CheckedNumbers):
    version: int = Field(ge=1, le=MAX_VERSION, description="the version to make current again")


def add_version_routes(app: FastAPI, cp: ControlPlane, auth: list[Any]) -> None:
    @app.get("/api/v1/services/{name}/versions", dependencies=auth)
    def versions(name: str) -> dict[str, Any]:
        return {"versions": cp.versions(name)}

    @app.post("/api/v1/services/{name}/rollback", dependencies=auth)
    def rollback(name: str, body: RollbackBody) -> dict[str, Any]:
        not_deleting(cp.store, name)
        cp.store.rollback(name, body.version)
        cp.wake()
        return cp.detail(name)
