"""The versions resource: ``/api/v1/services/{name}/versions`` (each deploy or rollback makes
one), ``/versions/diff?from=A&to=B`` (what changed between two versions' specs, as a unified diff)
and ``/rollback`` (the spec of an earlier version, current again as a new version)."""

from __future__ import annotations

import difflib
import json
from typing import Any

from fastapi import FastAPI, Query
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

    @app.get("/api/v1/services/{name}/versions/diff", dependencies=auth)
    def diff(
        name: str,
        a: int = Query(alias="from", ge=1, le=MAX_VERSION, description="the older side's version"),
        b: int = Query(alias="to", ge=1, le=MAX_VERSION, description="the newer side's version"),
    ) -> dict[str, Any]:
        """The two versions' specs (secrets left out, as ``describe`` shows them), line by line."""
        lines = spec_diff(
            cp.store.version_spec(name, a).public_dict(), cp.store.version_spec(name, b).public_dict(), a, b
        )
        return {"service": name, "from": a, "to": b, "changed": bool(lines), "diff": lines}

    @app.post("/api/v1/services/{name}/rollback", dependencies=auth)
    def rollback(name: str, body: RollbackBody) -> dict[str, Any]:
        not_deleting(cp.store, name)
        cp.store.rollback(name, body.version)
        cp.wake()
        return cp.detail(name)


DIFF_CONTEXT = 3
"""Unchanged lines shown around each change of a versions diff."""


def spec_diff(old: dict[str, Any], new: dict[str, Any], a: int, b: int) -> list[str]:
    """A unified diff (``DIFF_CONTEXT`` lines of context) of two specs as indented JSON with
    sorted keys, so only what changed shows; [] when they are the same."""

    def text(spec: dict[str, Any]) -> list[str]:
        return json.dumps(spec, indent=2, sort_keys=True).splitlines()

    return list(difflib.unified_diff(text(old), text(new), f"v{a}", f"v{b}", n=DIFF_CONTEXT, lineterm=""))
