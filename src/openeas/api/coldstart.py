"""The control plane's cold-start statistics API (docs/cold-start.md, "Statistics"):

``GET /api/v1/services/{name}/coldstart?window=N``: p50 and p90 of each phase of a start (pull,
fetch, prepare, start, warm, total) over the service's last N starts that reached Ready
(default :data:`DEFAULT_WINDOW`, at most the store's ``KEEP_PER_SERVICE``), the last few starts
themselves, and what the cron pre-scaling uses: the autoscaler's p90 cold start, the margin it
adds and the lead that results (or the spec's own ``prescale_lead``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Query

from openeas.api.control import iso_time
from openeas.spec.autoscaling import AutoscalingPolicy, Defaults
from openeas.store.cold_starts import KEEP_PER_SERVICE, ColdStartRow
from openeas.telemetry.coldstart import phase_stats

DEFAULT_WINDOW = 20  # starts the statistics cover unless ?window= says otherwise
RECENT_SHOWN = 5  # starts listed one by one


def prescale_view(
    policy: AutoscalingPolicy | None, status: Mapping[str, Any] | None, margin_s: float
) -> dict[str, Any]:
    """Where the cron pre-scaling's lead comes from: the spec, the measured p90 plus a margin, or
    the fallback before any start was measured on this server."""
    if policy is None:
        return {"used": False, "reason": "the service has no autoscaling policy"}
    p90 = (status or {}).get("cold_start_p90_s")
    if policy.prescale_lead_s is not None:
        lead, source = policy.prescale_lead_s, "spec (autoscaling.prescale_lead)"
    elif isinstance(p90, int | float):
        lead, source = p90 + margin_s, f"p90 cold start + {margin_s:g} s margin"
    else:
        lead, source = Defaults.PRESCALE_FALLBACK_S, "fallback: no start measured since the server started"
    return {
        "used": bool(policy.rules),
        "rules": len(policy.rules),
        "cold_start_p90_s": p90,
        "margin_s": margin_s,
        "lead_s": lead,
        "source": source,
    }


def coldstart_view(name: str, rows: Sequence[ColdStartRow], window: int) -> dict[str, Any]:
    starts = [r.spans for r in rows][-window:]
    return {
        "name": name,
        "window": window,
        "starts": len(starts),
        "phases": phase_stats(starts, window),
        "recent": [
            {"replica": r.replica, "version": r.version, "at": iso_time(r.at), **r.spans}
            for r in rows[-RECENT_SHOWN:]
        ],
    }


def add_coldstart_routes(app: FastAPI, cp: Any, auth: list[Any]) -> None:
    @app.get("/api/v1/services/{name}/coldstart", dependencies=auth, tags=["services"])
    def coldstart(
        name: str,
        window: int = Query(
            DEFAULT_WINDOW,
            ge=1,
            le=KEEP_PER_SERVICE,
            description="how many recent starts the statistics cover",
        ),
    ) -> dict[str, Any]:
        """p50/p90 of each cold-start phase over recent starts, and the pre-scaling lead."""
        svc = cp.store.get_service(name)
        policy = cp.store.version_spec(name, svc.current_version).autoscaling_policy()
        scaler = cp.autoscaler
        status = scaler.status(name) if scaler is not None else None
        margin = scaler.cfg.prescale_margin_s if scaler is not None else 0.0
        out = coldstart_view(name, cp.store.cold_starts(name, window), window)
        out["prescale"] = prescale_view(policy, status, margin)
        return out
