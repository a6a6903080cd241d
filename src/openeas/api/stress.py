"""The stress test in the control-plane API.

- ``GET  /api/v1/services/{name}/load``: ready and desired replicas, requests in flight and
  held at the gateways, arrival rate (what a stress test observes; any client may poll it); for a
  group's name (services and groups share one namespace), its members' summed;
- ``POST /api/v1/services/{name}/stress``: start a test in the server (body: an EAS benchmark
  task and/or ``{"options": {...}}``); 202 with its id; one test at a time (409 otherwise). A
  group's name tests the group's endpoint with its token, each answer attributed to its member;
- ``GET  /api/v1/stress`` (``?target=``): stored reports, newest first;
- ``GET  /api/v1/stress/{id}``: a report (``status: running`` while it runs);
  ``GET /api/v1/stress/{id}/html``: the same as a self-contained HTML page;
- ``DELETE /api/v1/stress/{id}``: stop a running test (it keeps a partial report);
- ``POST /api/v1/stress/reports``: keep a report made elsewhere (the CLI runs tests itself).

A plan is validated, its data file read and its target looked up before anything is sent: a
bad one is a 400 naming the field. ``data.path`` is a file the server reads as itself: an
absolute path inside a host folder the server was allowed (``--allow-host-path``), like a spec's.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query, Request
from fastapi.params import Depends
from fastapi.responses import HTMLResponse

from openeas.errors import Conflict, NotFound, OpenEASError
from openeas.kernel.states import IllegalTransition, ReplicaPhase, desired_replicas
from openeas.store import stress_reports as reports
from openeas.store.groups import GroupStore
from openeas.stress.analysis import StepResult
from openeas.stress.generator import Generator
from openeas.stress.members import GroupInfo
from openeas.stress.observe import ApiObserver
from openeas.stress.plan import PlanError, StressPlan, build_plan
from openeas.stress.report import to_html
from openeas.stress.runner import new_id, run_against

if TYPE_CHECKING:
    from openeas.api.control import ControlPlane

LOAD_WINDOW_S = 2.0  # arrival rate over the last 2 s


def is_group(cp: ControlPlane, name: str) -> bool:
    """``name`` is a group's, not a service's (a name is one or the other); NotFound when neither."""
    try:
        cp.store.get_service(name)
        return False
    except NotFound:
        if GroupStore(cp.store).exists(name):
            return True
        raise NotFound(f"no service or group '{name}'") from None


def load_view(cp: ControlPlane, name: str) -> dict[str, Any]:
    """What the control plane knows of ``name``'s load now (a group: its members' summed).
    None = no data (no gateway reported)."""
    if is_group(cp, name):
        return _group_load(cp, name)
    return _service_load(cp, name)


def _group_load(cp: ControlPlane, name: str) -> dict[str, Any]:
    views = [_service_load(cp, m.service) for m in GroupStore(cp.store).get(name).members]

    def total(key: str) -> Any:
        values = [v[key] for v in views if v[key] is not None]
        return sum(values) if values else None  # "no data" stays None, not 0

    out = {"name": name, "kind": "group"}
    for key in ("ready_replicas", "desired_replicas", "in_flight", "held", "arrival_rate"):
        out[key] = total(key)
    return out


def _service_load(cp: ControlPlane, name: str) -> dict[str, Any]:
    svc = cp.store.get_service(name)
    reps = [r for r in cp.store.replicas(name) if not r.stopping]
    stats = cp.gateway_stats
    now = time.monotonic()
    cur = stats.current(name, now) if stats is not None else None
    rate = stats.arrival_rate(name, LOAD_WINDOW_S, now) if stats is not None else None
    return {
        "name": name,
        "ready_replicas": sum(r.phase == ReplicaPhase.READY for r in reps),
        "desired_replicas": desired_replicas(svc.state, svc.desired_replicas),
        "in_flight": None if cur is None else cur.in_flight + cur.held,
        "held": None if cur is None else cur.held,
        "arrival_rate": None if rate is None else round(rate, 3),
    }


class StressRuns:
    """The stress test running in this server (one at a time), in a thread with its own loop."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self._lock = threading.Lock()
        self._running: str | None = None
        self._gen: Generator | None = None

    def start(self, plan: StressPlan) -> dict[str, Any]:
        with self._lock:
            if self._running is not None:
                raise Conflict(f"stress test {self._running} is running; one runs at a time")
            rid = new_id()
            self._running = rid
        stub = {"id": rid, "target": plan.target, "status": "running", "started_at": time.time(),
                "mode": plan.mode.value, "steps": []}  # fmt: skip
        reports.save(self.cp.store, stub)
        threading.Thread(target=self._run, args=(rid, plan), name=f"stress-{rid}", daemon=True).start()
        return {"id": rid, "target": plan.target, "status": "running"}

    def stop(self, rid: str) -> bool:
        with self._lock:
            if self._running != rid:
                return False
            if self._gen is not None:
                self._gen.stop()
            return True

    def _target(self, name: str) -> tuple[GroupInfo | None, str, int]:
        """(the group, or None for a service; the token to call it with; its min_replicas)."""
        cp = self.cp
        if is_group(cp, name):
            from openeas.api.groups import GroupsApi

            info = GroupInfo.from_detail(GroupsApi(cp).detail(name, stats=False))
            return info, GroupStore(cp.store).token(name), 1
        spec = cp.store.version_spec(name, cp.store.get_service(name).current_version)
        auto = (spec.model_extra or {}).get("autoscaling")
        min_replicas = int(auto.get("min_replicas") or 1) if isinstance(auto, dict) else 1
        return None, cp.store.token(name), min_replicas

    def _set_gen(self, gen: Generator) -> None:
        with self._lock:
            self._gen = gen

    def _run(self, rid: str, plan: StressPlan) -> None:
        cp = self.cp
        observer = ApiObserver(lambda: load_view(cp, plan.target)).start()
        partial = reports.get(cp.store, rid)

        def on_step(step: StepResult) -> None:  # the report's steps while it runs (the console's table)
            partial["steps"] = [*partial.get("steps", []), step.to_dict()]
            reports.save(cp.store, partial)

        try:
            group, token, min_replicas = self._target(plan.target)
            report = asyncio.run(
                run_against(
                    plan,
                    gateway_url=cp.gateway_url,
                    token=token,
                    observer=observer,
                    on_generator=self._set_gen,
                    on_step=on_step,
                    report_id=rid,
                    min_replicas=min_replicas,
                    group=group,
                )
            )
        except Exception as exc:  # kept in the report: the API's caller polls for it
            report = {"id": rid, "target": plan.target, "status": "failed", "end_reason": f"error: {exc}",
                      "started_at": time.time(), "mode": plan.mode.value, "steps": []}  # fmt: skip
        finally:
            observer.stop()
        try:
            reports.save(cp.store, report)
        finally:
            with self._lock:
                self._running = None
                self._gen = None


def register(app: FastAPI, cp: ControlPlane, auth: list[Depends]) -> None:
    """Add the stress routes to the control-plane API."""
    runs = StressRuns(cp)
    reports.mark_abandoned(cp.store)  # a test that ran in a previous life of the server

    @app.get("/api/v1/services/{name}/load", dependencies=auth, tags=["stress"])
    def load(name: str) -> dict[str, Any]:
        """Ready/desired replicas, in flight (held included) and arrival rate (req/s) now (a
        group: its members' summed)."""
        return load_view(cp, name)

    @app.post("/api/v1/services/{name}/stress", status_code=202, dependencies=auth, tags=["stress"])
    async def start(name: str, request: Request) -> dict[str, Any]:
        """Start a stress test of ``name`` (a service, or a group's endpoint) in the server. Body:
        an EAS benchmark task (``base``, ``data``, ``http``, ``optional``) and/or ``options`` in
        the plan's own field names."""
        body = await _json_object(request)
        options = body.pop("options", None)
        if options is not None and not isinstance(options, dict):
            raise PlanError(["options: must be an object"])
        is_group(cp, name)  # an unknown service (or group) is a 404 before anything else
        plan = await asyncio.to_thread(build_plan, name, body, options, _data_path_rule(cp))
        return runs.start(plan)

    @app.get("/api/v1/stress", dependencies=auth, tags=["stress"])
    def listing(
        target: str | None = None, limit: int = Query(100, ge=1, le=1000, description="newest N")
    ) -> dict[str, Any]:
        return {"reports": reports.listing(cp.store, target, limit)}

    @app.post("/api/v1/stress/reports", status_code=201, dependencies=auth, tags=["stress"])
    async def keep(request: Request) -> dict[str, Any]:
        """Keep a report made by ``openeas stress`` (the CLI runs tests in its own process)."""
        body = await _json_object(request)
        try:
            return reports.save(cp.store, body)
        except ValueError as exc:
            raise PlanError([str(exc)]) from None
        except IllegalTransition as exc:  # a finished run's report is final
            raise Conflict(f"report {body.get('id')!r}: {exc}") from None

    @app.get("/api/v1/stress/{rid}", dependencies=auth, tags=["stress"])
    def show(rid: str) -> dict[str, Any]:
        return reports.get(cp.store, rid)

    @app.get("/api/v1/stress/{rid}/html", dependencies=auth, tags=["stress"], response_class=HTMLResponse)
    def show_html(rid: str) -> HTMLResponse:
        return HTMLResponse(to_html(reports.get(cp.store, rid)))

    @app.delete("/api/v1/stress/{rid}", dependencies=auth, tags=["stress"])
    def cancel(rid: str) -> dict[str, Any]:
        """Stop a running test; it stores a partial report marked ``interrupted``."""
        reports.get(cp.store, rid)
        if not runs.stop(rid):
            raise Conflict(f"stress test {rid} is not running")
        return {"id": rid, "stopping": True}


def _data_path_rule(cp: ControlPlane) -> Callable[[str], list[str]]:
    """``data.path`` obeys the server's host folders (the server reads it as itself)."""
    return lambda path: cp.request_file_problems({"data.path": path})


class _BadBody(OpenEASError):
    code = "invalid_request"


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > reports.MAX_REPORT_BYTES:
        raise _BadBody(f"body: larger than {reports.MAX_REPORT_BYTES} bytes")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise _BadBody("body: not valid JSON") from None
    if not isinstance(body, dict):
        raise _BadBody("body: must be a JSON object")
    return body
