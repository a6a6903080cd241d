"""The logs resource: ``/api/v1/services/{name}/logs`` (the last lines of each replica's output,
read from its log file: at most the last 256 KiB of each)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query

from openeas.api.control import ControlPlane
from openeas.errors import NotFound

TAIL_WINDOW_BYTES = 256 * 1024
"""How much of the end of a replica's log a request reads at most (256 KiB)."""


def add_log_routes(app: FastAPI, cp: ControlPlane, auth: list[Any]) -> None:
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
        return {"logs": [{"replica": r.id, "text": tail_lines(Path(r.log_path), tail)} for r in reps]}


def tail_lines(path: Path, lines: int) -> str:
    """The last ``lines`` lines of ``path`` (within its last ``TAIL_WINDOW_BYTES``); "" if missing."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_WINDOW_BYTES))
            data = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
