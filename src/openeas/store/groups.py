"""Service groups in the store: create, apply, change weights, join, leave, roll back, delete.

Every write that changes what the gateway routes bumps the store's routing version in the same
transaction, so the gateway hears of it by the routing push (``DATA/run/gateway.sock``) a
millisecond after the commit, before the API call returns. Each change is recorded as an event
of the group (the events table's ``service`` column holds the group's name: services and groups
share one namespace).

Members keep when their weight last went from 0 to > 0 and back (``traffic_since``,
``traffic_until``) and a group keeps when a member that carried traffic left it (``departed``):
the 48-hour rule (`traffic_guard`) reads them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from openeas.errors import Conflict, NotFound, SpecError
from openeas.kernel.states import ServiceState
from openeas.spec.group import MAX_WEIGHT, GroupRoute, GroupSpec, parse_group
from openeas.store.db import Store
from openeas.store.group_schema import GroupMemberRow, GroupRow, RolloutRow
from openeas.store.schema import ServiceRow
from openeas.store.secrets import new_token


@dataclass(frozen=True)
class Member:
    service: str
    weight: int  # 0..1000
    mirror_weight: int  # percent
    match: dict[str, Any] | None
    joined_at: float  # epoch seconds
    traffic_since: float | None  # epoch seconds its weight last went from 0 to > 0
    traffic_until: float | None  # epoch seconds its weight last went from > 0 to 0

    def zero_since(self) -> float | None:
        """Since when it has had weight 0 (None while it has weight): joined_at if never weighted."""
        if self.weight > 0:
            return None
        return self.traffic_until if self.traffic_until is not None else self.joined_at


@dataclass(frozen=True)
class Group:
    name: str
    traffic_mode: str
    region_header: str
    keep_old_hours: float
    members: tuple[Member, ...]
    previous: list[dict[str, Any]] | None
    departed: dict[str, float]
    created_at: float
    updated_at: float

    def spec(self) -> GroupSpec:
        return GroupSpec.model_validate(
            {
                "name": self.name,
                "traffic_mode": self.traffic_mode,
                "region_header": self.region_header,
                "keep_old_hours": self.keep_old_hours,
                "routes": [_route_dict(m) for m in self.members],
            }
        )

    def member(self, service: str) -> Member | None:
        return next((m for m in self.members if m.service == service), None)


def _route_dict(m: Member) -> dict[str, Any]:
    out: dict[str, Any] = {"service": m.service, "weight": m.weight, "mirror_weight": m.mirror_weight}
    if m.match:
        out["match"] = m.match
    return out


@dataclass(frozen=True)
class TrafficHold:
    """Why a service should not be deleted or stopped without --force (the 48-hour rule)."""

    group: str
    serving: bool  # it carries the group's traffic now
    since: float | None  # epoch seconds it left the traffic (None while serving)
    keep_s: float  # seconds the group keeps a member that left its traffic

    def message(self, service: str, now: float) -> str:
        if self.serving:
            return (
                f"service '{service}' carries traffic of group '{self.group}'; move its weight to another "
                "member first, or use --force"
            )
        assert self.since is not None
        ago_h = (now - self.since) / 3600
        left_h = (self.keep_s - (now - self.since)) / 3600
        return (
            f"service '{service}' left the traffic of group '{self.group}' {ago_h:.1f} h ago; the group "
            f"keeps an old version {self.keep_s / 3600:g} h (keep_old_hours) because a weight back on "
            f"it is the fastest rollback ({left_h:.1f} h to go); use --force to go ahead"
        )


class GroupStore:
    """Groups on top of a `Store` (same database, sessions and routing push)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ---- reads ----------------------------------------------------------------------------------
    def _row(self, s: Session, name: str) -> GroupRow:
        row = s.get(GroupRow, name)
        if row is None:
            raise NotFound(f"group '{name}' not found")
        return row

    def _members(self, s: Session, name: str) -> list[GroupMemberRow]:
        q = select(GroupMemberRow).where(GroupMemberRow.group == name).order_by(GroupMemberRow.position)
        return list(s.scalars(q))

    def _view(self, s: Session, row: GroupRow) -> Group:
        return Group(
            name=row.name,
            traffic_mode=row.traffic_mode,
            region_header=row.region_header,
            keep_old_hours=row.keep_old_hours,
            members=tuple(
                Member(
                    service=m.service,
                    weight=m.weight,
                    mirror_weight=m.mirror_weight,
                    match=m.match,
                    joined_at=m.joined_at,
                    traffic_since=m.traffic_since,
                    traffic_until=m.traffic_until,
                )
                for m in self._members(s, row.name)
            ),
            previous=row.previous,
            departed=dict(row.departed or {}),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def get(self, name: str) -> Group:
        with self.store.read() as s:
            return self._view(s, self._row(s, name))

    def exists(self, name: str) -> bool:
        with self.store.read() as s:
            return s.get(GroupRow, name) is not None

    def list_groups(self) -> list[Group]:
        with self.store.read() as s:
            return [self._view(s, r) for r in s.scalars(select(GroupRow).order_by(GroupRow.name))]

    def token(self, name: str) -> str:
        with self.store.read() as s:
            return self.store.cipher.decrypt(self._row(s, name).token_enc)

    def groups_of(self, service: str) -> list[str]:
        with self.store.read() as s:
            q = select(GroupMemberRow.group).where(GroupMemberRow.service == service)
            return sorted(s.scalars(q))

    # ---- writes ---------------------------------------------------------------------------------
    def _check_services(self, s: Session, spec: GroupSpec) -> None:
        if s.get(ServiceRow, spec.name) is not None:
            raise Conflict(f"'{spec.name}' is the name of a service; services and groups share one namespace")
        errors = []
        for i, r in enumerate(spec.routes):
            svc = s.get(ServiceRow, r.service)
            if svc is None:
                errors.append(f"routes[{i}].service: no service '{r.service}'")
            elif svc.state == ServiceState.DELETING:
                errors.append(f"routes[{i}].service: service '{r.service}' is being deleted")
        if errors:
            raise SpecError(errors)

    def create(self, spec: GroupSpec) -> Group:
        now = time.time()
        with self.store.session() as s:
            if s.get(GroupRow, spec.name) is not None:
                raise Conflict(f"group '{spec.name}' already exists")
            self._check_services(s, spec)
            row = GroupRow(
                name=spec.name,
                traffic_mode=spec.traffic_mode,
                region_header=spec.region_header,
                keep_old_hours=spec.keep_old_hours,
                token_enc=self.store.cipher.encrypt(spec.token or new_token()),
                previous=None,
                departed={},
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            s.flush()
            self._write_routes(s, row, spec.routes, now)
            self.store._event(s, spec.name, "GroupCreated", f"group created: {_weights_text(spec.routes)}")
            self.store._bump_routing(s, groups=(spec.name,))
            return self._view(s, row)

    def apply(self, spec: GroupSpec) -> tuple[Group, bool]:
        """Create the group, or replace its settings and routes whole; (group, created)."""
        now = time.time()
        with self.store.session() as s:
            row = s.get(GroupRow, spec.name)
            if row is None:
                created = True
            else:
                created = False
                self._check_services(s, spec)
                row.traffic_mode = spec.traffic_mode
                row.region_header = spec.region_header
                row.keep_old_hours = spec.keep_old_hours
                if spec.token:
                    row.token_enc = self.store.cipher.encrypt(spec.token)
                self._write_routes(s, row, spec.routes, now)
                self.store._event(s, spec.name, "GroupUpdated", f"routes set: {_weights_text(spec.routes)}")
                self.store._bump_routing(s, groups=(spec.name,))
                return self._view(s, row), created
        return self.create(spec), created

    def change(
        self,
        name: str,
        *,
        weights: dict[str, int] | None = None,
        mirror_weights: dict[str, int] | None = None,
        reason: str = "WeightsChanged",
        message: str | None = None,
        event_type: str = "Normal",
    ) -> Group:
        """Set some members' weights and/or mirror weights (others keep theirs), validated as a
        whole; one event, one routing push."""
        now = time.time()
        with self.store.session() as s:
            row = self._row(s, name)
            group = self._view(s, row)
            spec = group.spec()
            known = {r.service for r in spec.routes}
            unknown = sorted((set(weights or {}) | set(mirror_weights or {})) - known)
            if unknown:
                members = ", ".join(sorted(known))
                raise SpecError(
                    [f"{svc}: not a member of group '{name}' (members: {members})" for svc in unknown]
                )
            routes = []
            for r in spec.routes:
                d = r.model_dump(exclude_none=True)
                if weights and r.service in weights:
                    d["weight"] = weights[r.service]
                if mirror_weights and r.service in mirror_weights:
                    d["mirror_weight"] = mirror_weights[r.service]
                routes.append(d)
            new = _validated(spec, routes)
            self._write_routes(s, row, new.routes, now)
            text = message or _weights_text(new.routes)
            self.store._event(s, name, reason, text, type=event_type)
            self.store._bump_routing(s, groups=(name,))
            return self._view(s, row)

    def set_routes(
        self,
        name: str,
        routes: list[dict[str, Any]],
        *,
        reason: str,
        message: str,
        event_type: str = "Normal",
    ) -> Group:
        now = time.time()
        with self.store.session() as s:
            row = self._row(s, name)
            new = _validated(self._view(s, row).spec(), routes)
            self._check_services(s, new)
            self._write_routes(s, row, new.routes, now)
            self.store._event(s, name, reason, message, type=event_type)
            self.store._bump_routing(s, groups=(name,))
            return self._view(s, row)

    def rollback(self, name: str) -> Group:
        """Restore the routes as they were before the last change (one command, one push)."""
        with self.store.read() as s:
            previous = self._row(s, name).previous
        if previous is None:
            raise Conflict(f"group '{name}' has no earlier routes to roll back to")
        return self.set_routes(
            name, previous, reason="RolledBack", message=f"routes rolled back: {_weights_text_raw(previous)}"
        )

    def join(self, name: str, service: str, weight: int = 0) -> Group:
        """Add ``service`` to the group (weight 0 unless given: a new member gets no traffic
        until someone gives it some)."""
        with self.store.read() as s:
            group = self._view(s, self._row(s, name))
        if group.member(service) is not None:
            raise Conflict(f"service '{service}' is already a member of group '{name}'")
        routes = [_route_dict(m) for m in group.members] + [{"service": service, "weight": weight}]
        message = f"{service} joined with weight {weight}"
        return self.set_routes(name, routes, reason="MemberJoined", message=message)

    def leave(self, name: str, service: str) -> Group:
        with self.store.read() as s:
            group = self._view(s, self._row(s, name))
        if group.member(service) is None:
            raise NotFound(f"service '{service}' is not a member of group '{name}'")
        routes = [_route_dict(m) for m in group.members if m.service != service]
        return self.set_routes(name, routes, reason="MemberLeft", message=f"{service} left the group")

    def join_from_spec(self, service: str, group: str) -> str | None:
        """A service spec's ``metadata.group`` (EAS): the group is created with the service as its
        one member (all the traffic) when absent; else the service joins with weight 0. Returns
        what happened, None when it was a member already."""
        with self.store.read() as s:
            row = s.get(GroupRow, group)
            if row is not None and any(m.service == service for m in self._members(s, group)):
                return None
        if row is None:
            self.create(GroupSpec(name=group, routes=[GroupRoute(service=service, weight=MAX_WEIGHT)]))
            return f"group '{group}' created with {service} as its only member"
        self.join(group, service, 0)
        return f"{service} joined group '{group}' with weight 0"

    def delete(self, name: str) -> None:
        with self.store.session() as s:
            self._row(s, name)
            s.execute(delete(GroupMemberRow).where(GroupMemberRow.group == name))
            s.execute(delete(RolloutRow).where(RolloutRow.group == name))
            s.execute(delete(GroupRow).where(GroupRow.name == name))
            self.store._event(s, name, "GroupDeleted", "group deleted")
            self.store._bump_routing(s, groups=(name,))

    def _write_routes(self, s: Session, row: GroupRow, routes: list[GroupRoute], now: float) -> None:
        """Replace the group's members by ``routes``, keeping each one's traffic times."""
        old = {m.service: m for m in self._members(s, row.name)}
        before = [_route_dict(self._view_member(m)) for m in old.values()]
        if old and before != [_plain(r) for r in routes]:
            row.previous = before
        departed = dict(row.departed or {})
        new_names = {r.service for r in routes}
        for svc, m in old.items():
            if svc not in new_names:
                if m.weight > 0 or row.traffic_mode == "auto":
                    departed[svc] = now
                elif m.traffic_until is not None:
                    departed[svc] = max(departed.get(svc, 0.0), m.traffic_until)
                s.delete(m)
        for i, r in enumerate(routes):
            found = old.get(r.service)
            if found is None:
                found = GroupMemberRow(group=row.name, service=r.service, joined_at=now, weight=0)
                found.mirror_weight = 0
                s.add(found)
                departed.pop(r.service, None)
            if found.weight == 0 and r.weight > 0:
                found.traffic_since = now
            elif found.weight > 0 and r.weight == 0:
                found.traffic_until = now
            found.position = i
            found.weight = r.weight
            found.mirror_weight = r.mirror_weight
            found.match = r.match.to_dict() if r.match is not None else None
        row.departed = departed
        row.updated_at = now

    @staticmethod
    def _view_member(m: GroupMemberRow) -> Member:
        return Member(
            m.service, m.weight, m.mirror_weight, m.match, m.joined_at, m.traffic_since, m.traffic_until
        )

    # ---- the 48-hour rule -----------------------------------------------------------------------
    def traffic_guard(self, service: str, now: float) -> TrafficHold | None:
        """Whether deleting or stopping ``service`` now needs --force, and why (None: it does not)."""
        with self.store.read() as s:
            rows = list(s.scalars(select(GroupRow)))
            holds = []
            for row in rows:
                keep_s = row.keep_old_hours * 3600.0
                member = s.get(GroupMemberRow, (row.name, service))
                if member is not None:
                    if member.weight > 0 or (row.traffic_mode == "auto" and member.mirror_weight == 0):
                        return TrafficHold(row.name, True, None, keep_s)
                    since = member.traffic_until
                else:
                    since = (row.departed or {}).get(service)
                if since is not None and now - since < keep_s:
                    holds.append(TrafficHold(row.name, False, since, keep_s))
        return max(holds, key=lambda h: h.since or 0.0) if holds else None


def _validated(spec: GroupSpec, routes: list[dict[str, Any]]) -> GroupSpec:
    return parse_group(spec.to_dict() | {"routes": routes})


def _plain(r: GroupRoute) -> dict[str, Any]:
    """A route as members are compared and kept in ``previous`` (mirror_weight always there)."""
    out: dict[str, Any] = {"service": r.service, "weight": r.weight, "mirror_weight": r.mirror_weight}
    if r.match is not None:
        out["match"] = r.match.to_dict()
    return out


def _weights_text(routes: list[GroupRoute]) -> str:
    return _weights_text_raw([_plain(r) for r in routes])


def _weights_text_raw(routes: list[dict[str, Any]]) -> str:
    if not routes:
        return "no members"
    parts = []
    for r in routes:
        text = f"{r['service']}={r.get('weight', 0)}"
        if r.get("mirror_weight"):
            text += f" (mirror {r['mirror_weight']}%)"
        if r.get("match"):
            text += " (match)"
        parts.append(text)
    return ", ".join(parts)
