"""The record of recent cold starts (schema v8): one row per replica start that reached Ready.

A replica's own row keeps only its last start (``replicas.cold_start``, reset on a restart), so
the cold-start statistics (``openeas coldstart``, openeas.telemetry.coldstart.phase_stats) read
this table: the spans of each start (seconds per phase, as ``breakdown`` computes them) and
where the image and the mounts came from (pulled or cached, fetched or a cache hit). The last
:data:`KEEP_PER_SERVICE` starts of each service are kept; older ones are deleted when a new one
is written. Rows outlive their replica and service (a service deployed again under the same
name starts with the old history: its model is likely the same).

The store calls these helpers inside its own transactions (store/db.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Connection, Float, Integer, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from openeas.store.schema import Base

KEEP_PER_SERVICE = 100  # starts kept per service: the statistics' widest window


class ColdStartRow(Base):
    __tablename__ = "cold_starts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    replica: Mapped[str] = mapped_column(String(128))
    at: Mapped[float] = mapped_column(Float)  # epoch seconds the replica turned Ready
    # span name → seconds or None (openeas.telemetry.coldstart.COLD_START_SPANS), plus
    # "pull": {"cached": bool}, "fetch": {"hit": bool, "bytes": int} when known.
    spans: Mapped[dict[str, Any]] = mapped_column(JSON)


def create_table(conn: Connection) -> None:
    """Schema v8 (portable DDL: SQLite and PostgreSQL). Starts before it are not known."""
    Base.metadata.create_all(conn, tables=[Base.metadata.tables[ColdStartRow.__tablename__]])


def record(s: Session, service: str, version: int, replica: str, at: float, spans: dict[str, Any]) -> None:
    """Add one start; keep the service's last KEEP_PER_SERVICE."""
    s.add(ColdStartRow(service=service, version=version, replica=replica, at=at, spans=spans))
    s.flush()
    keep = (
        select(ColdStartRow.id)
        .where(ColdStartRow.service == service)
        .order_by(ColdStartRow.id.desc())
        .limit(KEEP_PER_SERVICE)
    )
    oldest_kept = min(s.scalars(keep), default=None)
    if oldest_kept is not None:
        s.execute(delete(ColdStartRow).where(ColdStartRow.service == service, ColdStartRow.id < oldest_kept))


def recent(s: Session, service: str, limit: int) -> list[ColdStartRow]:
    """The service's last ``limit`` starts, oldest first."""
    q = (
        select(ColdStartRow)
        .where(ColdStartRow.service == service)
        .order_by(ColdStartRow.id.desc())
        .limit(limit)
    )
    return list(s.scalars(q))[::-1]
