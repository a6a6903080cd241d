"""The control-plane API of service groups: ``/api/v1/groups[...]``.

Writes go to the store (`openeas.store.groups.GroupStore`), which pushes every routing change to
the gateway; a write returns once the gateway acknowledged the routing version (``routing`` in the
answer, bounded by ``openeas.gateway.routing.ack.ROUTING_ACK_TIMEOUT_S``). Reads of traffic (``describe``'s
per-member numbers, ``compare``) ask the gateway (``GET /groups/<group>`` with the group's token):
it keeps them. Services and groups share one namespace. The 48-hour rule for ``delete``/``stop`` of
a service is `check_traffic`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import urllib.request
from typing import Any

from fastapi import FastAPI, Query, Request
from pydantic import Field

from openeas.errors import Conflict, NotFound, OpenEASError, SpecError
from openeas.gateway.groups.group_metrics import traffic_summary
from openeas.kernel.states import ReplicaPhase
from openeas.spec import ServiceSpec
from openeas.spec.group import MAX_MIRROR_PERCENT, MAX_WEIGHT, parse_group
from openeas.spec.load import parse_json
from openeas.spec.numbers import CheckedNumbers
from openeas.store.groups import Group, GroupStore

GATEWAY_TIMEOUT_S = 2.0  # seconds to wait for the gateway's group counters


def _iso(t: float | None) -> str | None:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat() if t is not None else None


class InTraffic(OpenEASError):
    """409: the 48-hour rule (a service that carries, or recently carried, a group's traffic)."""

    status = 409
    code = "in_group_traffic"


class WeightsBody(CheckedNumbers):
    weights: dict[str, int] = Field(default_factory=dict, description="member → weight 0..1000")
    mirror_weights: dict[str, int] = Field(
        default_factory=dict, description="member → percent 0..100 of requests copied to it"
    )


class MemberBody(CheckedNumbers):
    service: str
    weight: int = Field(default=0, description="0..1000; a new member gets no traffic unless given some")


def check_weights(body: WeightsBody) -> None:
    errors = [
        f"weights.{svc}: must be 0..{MAX_WEIGHT}, got {w}"
        for svc, w in body.weights.items()
        if not 0 <= w <= MAX_WEIGHT
    ]
    errors += [
        f"mirror_weights.{svc}: must be a percentage 0..{MAX_MIRROR_PERCENT}, got {w}"
        for svc, w in body.mirror_weights.items()
        if not 0 <= w <= MAX_MIRROR_PERCENT
    ]
    if not body.weights and not body.mirror_weights:
        errors.append("weights: give at least one member's weight or mirror weight")
    if errors:
        raise SpecError(errors)


class GroupsApi:
    """What the group routes need from the control plane."""

    def __init__(self, cp: Any) -> None:
        self.cp = cp  # openeas.api.control.ControlPlane
        self.groups = GroupStore(cp.store)

    def endpoint(self, name: str) -> str:
        return f"{self.cp.gateway_url}/api/predict/{name}"

    def in_effect(self) -> dict[str, Any]:
        """``{"routing": ...}`` once the gateway applied the change (bounded wait), or ``{}``."""
        routing = self.cp.routing_in_effect()
        return {"routing": routing} if routing is not None else {}

    def gateway_stats(self, name: str) -> dict[str, Any] | None:
        """The gateway's counters of the group (None when it cannot be asked)."""
        req = urllib.request.Request(
            f"{self.cp.gateway_url}/groups/{name}", headers={"Authorization": self.groups.token(name)}
        )
        try:
            with urllib.request.urlopen(req, timeout=GATEWAY_TIMEOUT_S) as r:
                data: dict[str, Any] = json.loads(r.read())
                return data
        except (OSError, ValueError):
            return None

    def detail(self, name: str, *, stats: bool = True) -> dict[str, Any]:
        g = self.groups.get(name)
        return self.view(g, stats=stats)

    def view(self, g: Group, *, stats: bool = True) -> dict[str, Any]:
        now = time.time()
        store = self.cp.store
        services = {s.name: s for s in store.list_services()}
        ready: dict[str, int] = {}
        for m in g.members:
            ready[m.service] = sum(
                r.phase == ReplicaPhase.READY and not r.stopping for r in store.replicas(m.service)
            )
        auto = g.traffic_mode == "auto"
        shares = {
            m.service: (ready[m.service] if not m.mirror_weight else 0) if auto else m.weight
            for m in g.members
        }
        total = sum(shares.values())
        members = []
        for m in g.members:
            svc = services.get(m.service)
            zero = m.zero_since()
            members.append(
                {
                    "service": m.service,
                    "weight": m.weight,
                    "share_percent": round(100.0 * shares[m.service] / total, 2) if total else 0.0,
                    "mirror_weight": m.mirror_weight,
                    "match": m.match,
                    "status": self.cp.summary(svc)["status"] if svc is not None else "Missing",
                    "ready_replicas": ready[m.service],
                    "endpoint": self.endpoint(f"{g.name}.{m.service}"),
                    "zero_since": _iso(zero),
                    "at_zero_s": None if zero is None else round(now - zero, 1),
                    "joined_at": _iso(m.joined_at),
                }
            )
        out: dict[str, Any] = {
            "name": g.name,
            "kind": "ServiceGroup",
            "traffic_mode": g.traffic_mode,
            "region_header": g.region_header,
            "keep_old_hours": g.keep_old_hours,
            "endpoint": self.endpoint(g.name),
            "members": members,
            "previous": g.previous,
            "created_at": _iso(g.created_at),
            "updated_at": _iso(g.updated_at),
        }
        if stats:
            raw = self.gateway_stats(g.name)
            out["stats"] = None if raw is None else member_stats(raw)
        return out

    def compare(self, name: str) -> dict[str, Any]:
        g = self.groups.get(name)
        raw = self.gateway_stats(name)
        if raw is None:
            raise GatewayUnavailable(f"the gateway did not answer for group '{name}'")
        members = raw.get("members") or {}
        out = {}
        for svc, m in members.items():
            c = m.get("compare") or {}
            pairs = int(c.get("pairs", 0))
            member = g.member(svc)
            if not pairs and (member is None or not member.mirror_weight):
                continue  # not a mirror target, and never was on this gateway
            status_differ, body_differ = int(c.get("status_differ", 0)), int(c.get("body_differ", 0))
            out[svc] = {
                "pairs": pairs,
                "status_agreement": None if not pairs else round((pairs - status_differ) / pairs, 4),
                "body_agreement": None
                if not pairs
                else round((pairs - status_differ - body_differ) / pairs, 4),
                "latency_delta_ms_mean": None
                if not pairs
                else round(1000 * float(c.get("latency_delta_sum_s", 0.0)) / pairs, 2),
                "mirror": traffic_summary(m.get("mirror") or {}),
                "mirror_dropped": m.get("mirror_dropped") or {},
                "samples": c.get("samples") or [],
            }
        baseline = {
            svc: traffic_summary(m.get("live") or {})
            for svc, m in members.items()
            if (m.get("live") or {}).get("count")
        }
        return {"group": name, "candidates": out, "baseline_live": baseline}


class GatewayUnavailable(OpenEASError):
    status = 503
    code = "gateway_unavailable"


def member_stats(raw: dict[str, Any]) -> dict[str, Any]:
    """Per member: requests, success, p50/p99 of live and mirrored traffic (since the gateway started)."""
    out = {}
    for svc, m in (raw.get("members") or {}).items():
        out[svc] = {
            "live": traffic_summary(m.get("live") or {}),
            "mirror": traffic_summary(m.get("mirror") or {})
            | {"dropped": m.get("mirror_dropped") or {}, "in_flight": m.get("mirror_in_flight", 0)},
        }
    return out


# --- the 48-hour rule and metadata.group -----------------------------------------------------------------


def check_traffic(groups: GroupStore, service: str, force: bool, what: str) -> None:
    """Refuse to ``what`` (delete, stop) a service in or recently in a group's traffic unless forced."""
    if force:
        return
    now = time.time()
    hold = groups.traffic_guard(service, now)
    if hold is not None:
        raise InTraffic(f"cannot {what}: {hold.message(service, now)}")


def check_spec_group(groups: GroupStore, store: Any, spec: ServiceSpec) -> None:
    """``metadata.group`` must not name a service (before the service is written)."""
    group = spec.metadata.group
    if group is None:
        return
    if group == spec.name:
        raise SpecError([f"metadata.group: '{group}' is the service's own name"])
    try:
        store.get_service(group)
    except NotFound:
        return
    raise SpecError([f"metadata.group: '{group}' is a service, not a group"])


def join_spec_group(groups: GroupStore, spec: ServiceSpec) -> None:
    group = spec.metadata.group
    if group is not None:
        what = groups.join_from_spec(spec.name, group)
        if what is not None:
            groups.store.record_event(spec.name, "JoinedGroup", what)


# --- routes ----------------------------------------------------------------------------------------------


async def _group_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return parse_json(raw)
    except ValueError:
        raise SpecError(["group: request body is not valid JSON"]) from None


def add_group_routes(app: FastAPI, cp: Any, auth: list[Any]) -> GroupsApi:
    api = GroupsApi(cp)
    gs = api.groups

    @app.post("/api/v1/groups", status_code=201, dependencies=auth, tags=["groups"])
    async def create_group(request: Request) -> dict[str, Any]:
        """Create a group from ``{name, traffic_mode, routes: [{service, weight, mirror_weight, match}]}``."""
        spec = parse_group(await _group_body(request))
        gs.create(spec)
        return api.detail(spec.name, stats=False) | await asyncio.to_thread(api.in_effect)

    @app.put("/api/v1/groups/{name}", dependencies=auth, tags=["groups"])
    async def apply_group(name: str, request: Request) -> dict[str, Any]:
        """Create the group or replace its settings and routes whole (``deploy -f group.yaml``)."""
        spec = parse_group(await _group_body(request))
        if spec.name != name:
            raise SpecError([f"name: '{spec.name}' does not match the group in the URL ('{name}')"])
        _, created = gs.apply(spec)
        return api.detail(name, stats=False) | {"created": created} | await asyncio.to_thread(api.in_effect)

    @app.get("/api/v1/groups", dependencies=auth, tags=["groups"])
    def list_groups() -> dict[str, Any]:
        return {"groups": [api.view(g, stats=False) for g in gs.list_groups()]}

    @app.get("/api/v1/groups/{name}", dependencies=auth, tags=["groups"])
    def describe_group(
        name: str, stats: bool = Query(True, description="ask the gateway for traffic")
    ) -> dict[str, Any]:
        return api.detail(name, stats=stats)

    @app.delete("/api/v1/groups/{name}", dependencies=auth, tags=["groups"])
    def delete_group(name: str) -> dict[str, Any]:
        gs.delete(name)
        return {"deleted": name} | api.in_effect()

    @app.post("/api/v1/groups/{name}/weights", dependencies=auth, tags=["groups"])
    def set_weights(name: str, body: WeightsBody) -> dict[str, Any]:
        """Change some members' weights (or mirror weights); in effect at the gateway when this
        returns (the gateway acknowledged the routing version; ``routing`` says so, or names the
        gateway that did not answer in time), recorded as an event."""
        check_weights(body)
        g = gs.change(name, weights=body.weights or None, mirror_weights=body.mirror_weights or None)
        return api.view(g, stats=False) | api.in_effect()

    @app.post("/api/v1/groups/{name}/rollback", dependencies=auth, tags=["groups"])
    def rollback_group(name: str) -> dict[str, Any]:
        """Restore the routes as they were before the last change (in effect when this returns)."""
        return api.view(gs.rollback(name), stats=False) | api.in_effect()

    @app.post("/api/v1/groups/{name}/members", status_code=201, dependencies=auth, tags=["groups"])
    def join(name: str, body: MemberBody) -> dict[str, Any]:
        if not 0 <= body.weight <= MAX_WEIGHT:
            raise SpecError([f"weight: must be 0..{MAX_WEIGHT}, got {body.weight}"])
        return api.view(gs.join(name, body.service, body.weight), stats=False) | api.in_effect()

    @app.delete("/api/v1/groups/{name}/members/{service}", dependencies=auth, tags=["groups"])
    def leave(name: str, service: str) -> dict[str, Any]:
        return api.view(gs.leave(name, service), stats=False) | api.in_effect()

    @app.get("/api/v1/groups/{name}/call-info", dependencies=auth, tags=["groups"])
    def group_call_info(name: str) -> dict[str, Any]:
        return {"endpoint": api.endpoint(name), "token": gs.token(name)}

    @app.get("/api/v1/groups/{name}/compare", dependencies=auth, tags=["groups"])
    def compare(name: str) -> dict[str, Any]:
        """Mirrored pairs: status agreement, body agreement, latency delta, differing samples."""
        return api.compare(name)

    @app.get("/api/v1/groups/{name}/events", dependencies=auth, tags=["groups"])
    def group_events(name: str, limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
        if not gs.exists(name):
            raise NotFound(f"group '{name}' not found")
        return {
            "events": [
                {"time": _iso(e.time), "type": e.type, "reason": e.reason, "message": e.message}
                for e in cp.store.events(name, limit)
            ]
        }

    return api


__all__ = ["Conflict", "GroupsApi", "InTraffic", "add_group_routes", "check_traffic"]
