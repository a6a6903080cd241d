"""Eval runs kept in the store (table ``eval_runs``, schema v12: ``store.db._v12_eval_runs``).

A row per run of an eval set against a service (``openeas eval``, ``POST /api/v1/eval``, or a
rollout's eval gate): its id, target, service, time, pass rate and the whole JSON report (the
failures and latency). The newest ``KEEP_PER_SERVICE`` runs of a service are kept.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text

from openeas.errors import NotFound
from openeas.store.db import Store

KEEP_PER_SERVICE = 100  # older runs of a service are dropped when a new one is saved


def save(store: Store, rep: dict[str, Any]) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO eval_runs (id, target, service, created_at, pass_rate, report)"
                " VALUES (:id, :target, :service, :created, :rate, :report)"
            ),
            {
                "id": rep["id"],
                "target": rep["target"],
                "service": rep["service"],
                "created": rep["started_at"],
                "rate": rep["pass_rate"],
                "report": json.dumps(rep, separators=(",", ":")),
            },
        )
        old = conn.execute(
            text("SELECT id FROM eval_runs WHERE service = :s ORDER BY created_at DESC LIMIT -1 OFFSET :keep")
            if conn.dialect.name == "sqlite"
            else text("SELECT id FROM eval_runs WHERE service = :s ORDER BY created_at DESC OFFSET :keep"),
            {"s": rep["service"], "keep": KEEP_PER_SERVICE},
        ).scalars()
        for rid in list(old):
            conn.execute(text("DELETE FROM eval_runs WHERE id = :id"), {"id": rid})


def _load(value: Any) -> dict[str, Any]:
    doc = json.loads(value) if isinstance(value, str) else value
    return doc if isinstance(doc, dict) else {}


def get(store: Store, run_id: str) -> dict[str, Any]:
    with store.read_engine.connect() as conn:
        row = conn.execute(text("SELECT report FROM eval_runs WHERE id = :id"), {"id": run_id}).first()
    if row is None:
        raise NotFound(f"eval run '{run_id}' not found")
    return _load(row[0])


def list_runs(store: Store, service: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first: each run's report without its failures."""
    query = "SELECT report FROM eval_runs"
    params: dict[str, Any] = {"limit": limit}
    if service is not None:
        query += " WHERE service = :s"
        params["s"] = service
    with store.read_engine.connect() as conn:
        rows = conn.execute(text(query + " ORDER BY created_at DESC LIMIT :limit"), params).all()
    out = []
    for (value,) in rows:
        doc = _load(value)
        doc["failures"] = len(doc.get("failures") or [])
        out.append(doc)
    return out
