"""Tables of the store (SQLAlchemy 2 ORM). Times are float seconds since the epoch (UTC)."""

from __future__ import annotations

from typing import Any, TypedDict

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Small key/value facts: schema version, routing version, the admin token (encrypted)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ServiceRow(Base):
    __tablename__ = "services"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Desired state: Running | Stopped | Deleting. What actually runs is in `replicas`.
    state: Mapped[str] = mapped_column(String(16), default="Running")
    current_version: Mapped[int] = mapped_column(Integer)
    desired_replicas: Mapped[int] = mapped_column(Integer)
    token_enc: Mapped[str] = mapped_column(Text)  # Fernet ciphertext; the key lives outside the DB
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class VersionRow(Base):
    """An immutable spec. A new deploy, update or rollback adds one; none is ever edited."""

    __tablename__ = "versions"
    service: Mapped[str] = mapped_column(
        String(64), ForeignKey("services.name", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The route-settings record the gateway reads (openeas.gateway.routing.table.RouteSettings.to_dict()),
    # computed from the typed spec when the version is written (schema v2).
    route: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class ReplicaRow(Base):
    __tablename__ = "replicas"
    # "<service>-<8 hex>": a 63-character service name makes 72 (PostgreSQL enforces the length)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    service: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    runtime: Mapped[str] = mapped_column(String(32), default="process")
    host: Mapped[str] = mapped_column(String(255), default="127.0.0.1")
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    start_ticks: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # An openeas.kernel.states.ReplicaPhase; its legal changes are openeas.kernel.states.TRANSITIONS.
    phase: Mapped[str] = mapped_column(String(16), default="Pending")
    # Set when the reconciler wants this replica gone (scale-down, old version, delete).
    stopping: Mapped[int] = mapped_column(Integer, default=0)  # 0 or 1
    # Set by the reconciler: keep this replica warmed out of routing (metadata.standby); cleared
    # to promote it into routing (schema v9).
    standby: Mapped[int] = mapped_column(Integer, default=0)  # 0 or 1
    # The runtime's node the replica runs on (a Ray node id); None on the embedded runtimes
    # (schema v11).
    node: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)
    restart_count: Mapped[int] = mapped_column(Integer, default=0)
    phase_times: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    cold_start: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    workdir: Mapped[str] = mapped_column(Text, default="")
    log_path: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class ReplicaFields(TypedDict, total=False):
    """The replica fields a controller may change (``Store.update_replica(rid, **fields)``)."""

    phase: str  # an openeas.kernel.states.ReplicaPhase
    stopping: bool
    standby: bool  # kept out of routing, warmed, for a scale-out (cleared: promote it)
    pid: int | None
    start_ticks: int | None  # field 22 of /proc/<pid>/stat: tells a recycled pid apart
    port: int | None  # the host port the replica listens on
    host: str  # where it is reached: 127.0.0.1, or its Ray node's address (--replica-address node)
    runtime: str  # which runtime started it: "process" or "container" (openeas.runtime.select)
    node: str | None  # the Ray node id it runs on; None: this machine (embedded runtimes)
    restart_count: int
    phase_times: dict[str, float]  # phase → epoch seconds it was entered
    cold_start: dict[str, Any]  # span name → seconds, plus the mount fetch summary
    message: str | None


REPLICA_FIELDS = frozenset(ReplicaFields.__annotations__)


class EventRow(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service: Mapped[str] = mapped_column(String(64), index=True)
    time: Mapped[float] = mapped_column(Float)
    type: Mapped[str] = mapped_column(String(16))  # Normal | Warning
    reason: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    replica: Mapped[str | None] = mapped_column(String(128), nullable=True)  # a ReplicaRow.id
