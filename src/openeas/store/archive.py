"""The 180-day rule's record (schema v8): dormancy counts and archived services.

``service_dormancy``: one row per dormant service (openeas.kernel.dormancy): since when it has not
been Running and the last warning issued, so a restart of the server neither restarts the count
nor repeats a warning. ``archived_services``: one row per archived service, its whole document:
the service row (state, current version, desired replicas, the token as stored: encrypted with
the data dir's key), every version (specs as stored: secrets sealed), its events and its group
memberships. Archiving moves all that into the document and marks the service Deleting (the
reconciler stops what runs and purges the rows); restoring puts it back, Stopped, and removes
the document.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from sqlalchemy import JSON, Connection, Float, Integer, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from openeas.errors import Conflict, NotFound
from openeas.kernel.dormancy import Dormancy
from openeas.kernel.states import ServiceState
from openeas.store.group_schema import GroupMemberRow, GroupRow
from openeas.store.schema import Base, EventRow, ServiceRow, VersionRow


class Store(Protocol):
    """What these helpers use of openeas.store.Store (not imported: the store imports this module)."""

    def session(self) -> AbstractContextManager[Session]: ...
    def read(self) -> AbstractContextManager[Session]: ...
    def _service(self, s: Session, name: str) -> ServiceRow: ...
    def _event(self, s: Session, service: str, reason: str, message: str, *, type: str = ...) -> None: ...
    def _bump_routing(
        self, s: Session, *, services: Iterable[str] = ..., groups: Iterable[str] = ...
    ) -> None: ...


class DormancyRow(Base):
    __tablename__ = "service_dormancy"
    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    since: Mapped[float] = mapped_column(Float)  # epoch seconds
    warned: Mapped[float | None] = mapped_column(Float, nullable=True)  # lead (s) of the last warning


class ArchivedRow(Base):
    __tablename__ = "archived_services"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    archived_at: Mapped[float] = mapped_column(Float)  # epoch seconds
    dormant_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str] = mapped_column(String(1024))
    document: Mapped[dict[str, Any]] = mapped_column(JSON)


TABLES = ("service_dormancy", "archived_services")


def create_tables(conn: Connection) -> None:
    """Schema v8 (portable DDL: SQLite and PostgreSQL); new tables only."""
    Base.metadata.create_all(conn, tables=[Base.metadata.tables[t] for t in TABLES])


# ---- dormancy ------------------------------------------------------------------------------------


def dormancies(store: Store) -> dict[str, Dormancy]:
    with store.read() as s:
        return {r.service: Dormancy(r.since, r.warned) for r in s.scalars(select(DormancyRow))}


def save_dormancy(store: Store, name: str, state: Dormancy) -> None:
    """Keep ``state`` for ``name`` (a state with no ``since`` removes the row)."""
    with store.session() as s:
        row = s.get(DormancyRow, name)
        if state.since is None:
            if row is not None:
                s.delete(row)
        elif row is None:
            s.add(DormancyRow(service=name, since=state.since, warned=state.warned))
        else:
            row.since, row.warned = state.since, state.warned


# ---- archive and restore ---------------------------------------------------------------------------


def _event_doc(e: EventRow) -> dict[str, Any]:
    return {"time": e.time, "type": e.type, "reason": e.reason, "message": e.message, "replica": e.replica}


def _member_doc(m: GroupMemberRow) -> dict[str, Any]:
    keys = (
        "group",
        "position",
        "weight",
        "mirror_weight",
        "match",
        "joined_at",
        "traffic_since",
        "traffic_until",
    )
    return {k: getattr(m, k) for k in keys}


def archive_service(store: Store, name: str, now: float, reason: str, since: float | None = None) -> int:
    """Move ``name``'s document into the archive and mark it Deleting; returns the archive id."""
    with store.session() as s:
        svc = store._service(s, name)
        if svc.state == ServiceState.DELETING:
            raise Conflict(f"service '{name}' is being deleted")
        versions = s.scalars(
            select(VersionRow).where(VersionRow.service == name).order_by(VersionRow.version)
        )
        events = s.scalars(select(EventRow).where(EventRow.service == name).order_by(EventRow.id))
        members = list(s.scalars(select(GroupMemberRow).where(GroupMemberRow.service == name)))
        doc = {
            "service": {
                "state": svc.state,
                "current_version": svc.current_version,
                "desired_replicas": svc.desired_replicas,
                "token_enc": svc.token_enc,
                "created_at": svc.created_at,
            },
            "versions": [
                {"version": v.version, "spec": v.spec, "route": v.route, "created_at": v.created_at}
                for v in versions
            ],
            "events": [_event_doc(e) for e in events],
            "groups": [_member_doc(m) for m in members],
        }
        row = ArchivedRow(name=name, archived_at=now, dormant_since=since, reason=reason, document=doc)
        s.add(row)
        s.execute(delete(EventRow).where(EventRow.service == name))
        s.execute(delete(GroupMemberRow).where(GroupMemberRow.service == name))
        s.execute(delete(DormancyRow).where(DormancyRow.service == name))
        svc.state = ServiceState.DELETING.value
        svc.updated_at = now
        store._event(s, name, "Archived", reason, type="Warning")
        store._bump_routing(s, services=(name,), groups=[m.group for m in members])
        s.flush()
        return row.id


def archived(store: Store, name: str | None = None) -> list[ArchivedRow]:
    """The archive, oldest first (``name``: that service's archives only)."""
    q = select(ArchivedRow).order_by(ArchivedRow.id)
    if name is not None:
        q = q.where(ArchivedRow.name == name)
    with store.read() as s:
        return list(s.scalars(q))


def restore_service(store: Store, name: str, now: float) -> dict[str, Any]:
    """Bring the latest archive of ``name`` back, Stopped; returns what was restored."""
    with store.session() as s:
        row = s.scalars(
            select(ArchivedRow).where(ArchivedRow.name == name).order_by(ArchivedRow.id.desc()).limit(1)
        ).first()
        if row is None:
            raise NotFound(f"no archived service '{name}' (openeas archive ls lists them)")
        existing = s.get(ServiceRow, name)
        if existing is not None:
            what = (
                "is still being deleted; try again" if existing.state == ServiceState.DELETING else "exists"
            )
            raise Conflict(f"cannot restore '{name}': a service of that name {what}")
        if s.get(GroupRow, name) is not None:
            raise Conflict(f"cannot restore '{name}': a service group has that name")
        doc = row.document
        svc = doc["service"]
        s.add(
            ServiceRow(
                name=name,
                state=ServiceState.STOPPED.value,
                current_version=svc["current_version"],
                desired_replicas=svc["desired_replicas"],
                token_enc=svc["token_enc"],
                created_at=svc["created_at"],
                updated_at=now,
            )
        )
        s.flush()
        for v in doc["versions"]:
            s.add(VersionRow(service=name, **v))
        # The events recorded while it was deleted stay, in time order with the archived ones.
        later = [_event_doc(e) for e in s.scalars(select(EventRow).where(EventRow.service == name))]
        s.execute(delete(EventRow).where(EventRow.service == name))
        for e in sorted([*doc["events"], *later], key=lambda e: e["time"]):
            s.add(EventRow(service=name, **e))
        joined, skipped = _rejoin(s, name, doc["groups"])
        s.delete(row)
        msg = f"restored from the archive of {row.archived_at:.0f} (Stopped: `openeas start` runs it)"
        if joined:
            msg += f"; rejoined group(s) {', '.join(joined)}"
        if skipped:
            msg += f"; group(s) {', '.join(skipped)} no longer exist: not rejoined"
        store._event(s, name, "Restored", msg)
        store._bump_routing(s, services=(name,), groups=joined)
        return {
            "name": name,
            "versions": len(doc["versions"]),
            "events": len(doc["events"]),
            "groups": joined,
            "groups_missing": skipped,
            "state": ServiceState.STOPPED.value,
        }


def _rejoin(s: Session, name: str, members: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    joined, skipped = [], []
    for m in members:
        if s.get(GroupRow, m["group"]) is None:
            skipped.append(m["group"])
            continue
        s.add(GroupMemberRow(service=name, **m))
        joined.append(m["group"])
    return joined, skipped
