"""Stress reports kept in the store (table ``stress_reports``, migration ``_v3_stress_reports``).

A row per test: its id, target, start time, status (``running``, ``completed``,
``interrupted``, ``failed``: ``kernel.states.StressState``; each write of a stored run's status
is checked against its transition table), a small summary for listings and the whole JSON report. Reports
live with the rest of the server's state (one backup, one place), whether the test ran in the
CLI (which uploads its report) or in the server (``POST /api/v1/services/{name}/stress``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import text

from openeas.errors import NotFound
from openeas.kernel.states import StressState, check_stress_transition
from openeas.store.db import Store

MAX_REPORT_BYTES = 16 * 1024 * 1024
KEEP_PER_TARGET = 200  # older reports of a target are dropped when a new one is saved


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """What a listing shows of a report."""
    sat = report.get("saturation") or {}
    rec = report.get("recommendation") or {}
    return {
        "id": report.get("id"),
        "target": report.get("target"),
        "status": report.get("status"),
        "started_at": report.get("started_at"),
        "duration_s": report.get("duration_s"),
        "mode": report.get("mode"),
        "steps": len(report.get("steps") or []),
        "requests": report.get("requests"),
        "qps_per_replica": sat.get("qps_per_replica"),
        "concurrency_per_replica": sat.get("concurrency_per_replica"),
        "saturation_found": sat.get("found"),
        "recommended_target": rec.get("target"),
        "recommended_metric": rec.get("metric"),
        "end_reason": report.get("end_reason"),
    }


def save(store: Store, report: dict[str, Any]) -> dict[str, Any]:
    """Insert or replace ``report`` (by its ``id``); returns its summary. ValueError names every
    bad field; IllegalTransition when it would change a stored run's state against the table."""
    rid, target = report.get("id"), report.get("target")
    status = str(report.get("status") or StressState.COMPLETED)
    problems = []
    if not isinstance(rid, str) or not rid or len(rid) > 64:
        problems.append("report.id: must be a string of 1..64 characters")
    if not isinstance(target, str) or not target:
        problems.append("report.target: must be a non-empty string")
    if status not in set(StressState):
        problems.append(f"report.status: {status!r} is not one of {', '.join(StressState)}")
    body = json.dumps(report, separators=(",", ":"))
    if len(body) > MAX_REPORT_BYTES:
        problems.append(f"report: larger than {MAX_REPORT_BYTES} bytes")
    if problems:
        raise ValueError("; ".join(problems))
    s = summary(report)
    started = report.get("started_at")
    created = float(started) if isinstance(started, int | float) else time.time()
    with store.engine.begin() as conn:
        old = conn.execute(text("SELECT status FROM stress_reports WHERE id = :id"), {"id": rid}).first()
        if old is not None:
            check_stress_transition(old[0], status)
        conn.execute(
            text(
                "INSERT INTO stress_reports (id, target, created_at, status, summary, report)"
                " VALUES (:id, :target, :created, :status, :summary, :report)"
                " ON CONFLICT(id) DO UPDATE SET status = :status, summary = :summary, report = :report"
            ),
            {
                "id": rid,
                "target": target,
                "created": created,
                "status": status,
                "summary": json.dumps(s),
                "report": body,
            },
        )
        conn.execute(
            text(
                "DELETE FROM stress_reports WHERE target = :target AND id NOT IN ("
                " SELECT id FROM stress_reports WHERE target = :target"
                " ORDER BY created_at DESC LIMIT :keep)"
            ),
            {"target": target, "keep": KEEP_PER_TARGET},
        )
    return s


def mark_abandoned(store: Store) -> int:
    """Reports still ``running`` when a server starts were cut by its previous life: ``interrupted``.
    Returns how many."""
    frm, to = StressState.RUNNING, check_stress_transition(StressState.RUNNING, StressState.INTERRUPTED)
    with store.engine.begin() as conn:
        result = conn.execute(
            text("UPDATE stress_reports SET status = :to WHERE status = :frm"),
            {"to": to.value, "frm": frm.value},
        )
    return int(getattr(result, "rowcount", 0) or 0)


def listing(store: Store, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Summaries, newest first."""
    where = "WHERE target = :target " if target else ""
    with store.read_engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT summary, status FROM stress_reports {where}ORDER BY created_at DESC LIMIT :limit"),
            {"target": target, "limit": limit},
        ).all()
    # the status column wins: mark_abandoned changes it alone
    return [{**(json.loads(r[0]) if isinstance(r[0], str) else r[0]), "status": r[1]} for r in rows]


def get(store: Store, rid: str) -> dict[str, Any]:
    with store.read_engine.connect() as conn:
        row = conn.execute(
            text("SELECT report, status FROM stress_reports WHERE id = :id"), {"id": rid}
        ).first()
    if row is None:
        raise NotFound(f"no stress report '{rid}'")
    value = row[0]
    out: dict[str, Any] = json.loads(value) if isinstance(value, str) else value
    out["status"] = row[1]
    return out
