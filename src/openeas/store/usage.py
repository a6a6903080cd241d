"""The meter's record: one row per replica, from its creation to its end (schema v7).

A replica is billed, as the cloud bills an instance, in every phase but Stopped: from the moment
its row is created (Pending) to the moment it is stopped or its row deleted, whichever comes
first. The row outlives the replica (and the service): ``openeas cost report`` reads it.

``resources`` snapshots what prices a replica (``cloud.computing.instance_type``,
``cloud.computing.instances``, ``metadata.cpu|memory|gpu`` of its version) when it is created,
so a report can price a replica of a service deleted since; the catalog maps it at report time
(openeas.cost.meter). ``cold_starts`` counts its process starts (entries into Starting from
Pending, Fetching, Preparing or Failed) and ``bytes_fetched`` what each start's mounts copied
from storage (``cold_start.fetch.bytes``).

The store calls these helpers inside its own transactions (store/db.py).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import JSON, Connection, Float, Integer, String, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from openeas.kernel.states import ReplicaPhase
from openeas.store.schema import Base, ReplicaRow

# Entries into Starting from these phases start a process: a cold start. (Warming → Starting and
# Draining → Starting re-probe a process that already runs.)
_STARTS_FROM = frozenset(
    {ReplicaPhase.PENDING, ReplicaPhase.FETCHING, ReplicaPhase.PREPARING, ReplicaPhase.FAILED}
)


class UsageRow(Base):
    __tablename__ = "replica_usage"
    replica: Mapped[str] = mapped_column(String(64), primary_key=True)
    service: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    resources: Mapped[dict[str, Any]] = mapped_column(JSON)
    started_at: Mapped[float] = mapped_column(Float, index=True)  # epoch seconds: the row's creation
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: still billed
    cold_starts: Mapped[int] = mapped_column(Integer, default=0)
    bytes_fetched: Mapped[int] = mapped_column(Integer, default=0)


def create_table(conn: Connection) -> None:
    """Schema v7 (portable DDL: SQLite and PostgreSQL). The replicas that exist when it runs are
    metered from their creation (their cold starts before it are not known: 0)."""
    table = Base.metadata.tables[UsageRow.__tablename__]
    Base.metadata.create_all(conn, tables=[table])
    replicas, versions = Base.metadata.tables["replicas"], Base.metadata.tables["versions"]
    specs = {
        (v.service, v.version): v.spec
        for v in conn.execute(select(versions.c.service, versions.c.version, versions.c.spec))
    }
    known = set(conn.execute(select(table.c.replica)).scalars())
    for r in conn.execute(
        select(replicas.c.id, replicas.c.service, replicas.c.version, replicas.c.created_at)
    ):
        if r.id in known:
            continue
        spec = specs.get((r.service, r.version))
        doc = json.loads(spec) if isinstance(spec, str) else spec
        conn.execute(
            insert(table).values(
                replica=r.id,
                service=r.service,
                version=r.version,
                resources=resources_of(doc if isinstance(doc, dict) else {}),
                started_at=r.created_at,
                ended_at=None,
                cold_starts=0,
                bytes_fetched=0,
            )
        )


def resources_of(spec: dict[str, Any]) -> dict[str, Any]:
    """What prices a replica of a stored spec (a plain dict: nothing here is secret)."""
    computing = ((spec.get("cloud") or {}).get("computing")) or {}
    meta = spec.get("metadata") or {}
    return {
        "instance_type": computing.get("instance_type"),
        "instances": computing.get("instances"),
        "cpu": meta.get("cpu"),
        "memory": meta.get("memory"),
        "gpu": meta.get("gpu"),
    }


def opened(s: Session, row: ReplicaRow, spec: dict[str, Any]) -> None:
    s.add(
        UsageRow(
            replica=row.id,
            service=row.service,
            version=row.version,
            resources=resources_of(spec),
            started_at=row.created_at,
            ended_at=None,
            cold_starts=0,
            bytes_fetched=0,
        )
    )


def on_phase(s: Session, row: ReplicaRow, old: str, new: ReplicaPhase, now: float) -> None:
    """A phase change of ``row`` (already applied): a cold start, or the end of billing."""
    usage = s.get(UsageRow, row.id)
    if usage is None or usage.ended_at is not None:
        return
    if new is ReplicaPhase.STOPPED:
        usage.ended_at = now
    elif new is ReplicaPhase.STARTING and old in _STARTS_FROM:
        usage.cold_starts += 1
        fetch = (row.cold_start or {}).get("fetch") or {}
        usage.bytes_fetched += int(fetch.get("bytes") or 0)


def closed(s: Session, rid: str, now: float) -> None:
    usage = s.get(UsageRow, rid)
    if usage is not None and usage.ended_at is None:
        usage.ended_at = now


def usage_rows(s: Session, *, service: str | None = None, since: float | None = None) -> list[UsageRow]:
    """Rows billed at or after ``since`` (all when None), oldest first."""
    q = select(UsageRow).order_by(UsageRow.started_at, UsageRow.replica)
    if service is not None:
        q = q.where(UsageRow.service == service)
    if since is not None:
        q = q.where((UsageRow.ended_at.is_(None)) | (UsageRow.ended_at >= since))
    return list(s.scalars(q))
