"""The control plane's archive API (the 180-day rule, docs/archive.md).

- ``GET /api/v1/archive``: the archived services (name, when, why, what the document holds) and
  the rule in force;
- ``POST /api/v1/archive/{name}/restore``: the latest archive of ``name`` back as a service,
  Stopped (404: no such archive; 409: a service or group of that name exists).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import FastAPI

from openeas.controller.archiver import ArchiveRule
from openeas.store.archive import ArchivedRow, archived, restore_service


def archive_entry(row: ArchivedRow) -> dict[str, Any]:
    doc = row.document
    return {
        "name": row.name,
        "archived_at": row.archived_at,
        "dormant_since": row.dormant_since,
        "reason": row.reason,
        "versions": len(doc.get("versions", [])),
        "current_version": doc.get("service", {}).get("current_version"),
        "events": len(doc.get("events", [])),
        "groups": [m["group"] for m in doc.get("groups", [])],
    }


def add_archive_routes(app: FastAPI, cp: Any, auth: list[Any]) -> None:
    @app.get("/api/v1/archive", dependencies=auth, tags=["archive"])
    async def archive_ls() -> dict[str, Any]:
        """The archived services, oldest first, and the rule in force."""
        rows = await asyncio.to_thread(archived, cp.store)
        rule = ArchiveRule.from_env()
        return {
            "rule": {"after_s": rule.after_s, "text": rule.describe()},
            "items": [archive_entry(r) for r in rows],
        }

    @app.post("/api/v1/archive/{name}/restore", dependencies=auth, tags=["archive"])
    async def archive_restore(name: str) -> dict[str, Any]:
        """The latest archive of ``name`` back as a service (Stopped)."""
        return await asyncio.to_thread(restore_service, cp.store, name, time.time())
