"""Tables of service groups and staged rollouts (schema v3). Times are float seconds since the
epoch (UTC); weights 0..1000, mirror weights 0..100 (percent)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from openeas.store.schema import Base


class GroupRow(Base):
    """A service group: one endpoint in front of its members (``group_members``)."""

    __tablename__ = "groups"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    traffic_mode: Mapped[str] = mapped_column(String(16), default="customized")  # customized | auto
    region_header: Mapped[str] = mapped_column(String(128), default="X-Region")
    keep_old_hours: Mapped[float] = mapped_column(Float, default=48.0)
    token_enc: Mapped[str] = mapped_column(Text)  # Fernet ciphertext, as a service's token
    # The routes before the last change ([{service, weight, mirror_weight, match}]): what
    # `group rollback` restores. None before the first change.
    previous: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # service → epoch seconds it left the group's traffic by leaving the group (the 48-hour rule).
    departed: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class GroupMemberRow(Base):
    __tablename__ = "group_members"
    group: Mapped[str] = mapped_column(String(64), primary_key=True)
    service: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)  # order of the routes as written
    weight: Mapped[int] = mapped_column(Integer, default=0)  # 0..1000
    mirror_weight: Mapped[int] = mapped_column(Integer, default=0)  # percent, 0..100
    match: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    joined_at: Mapped[float] = mapped_column(Float)
    # When its weight last went from 0 to > 0, and from > 0 to 0 (None: never).
    traffic_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    traffic_until: Mapped[float | None] = mapped_column(Float, nullable=True)


class RolloutRow(Base):
    """A staged rollout of a group (at most one per group): its plan and where it stands."""

    __tablename__ = "rollouts"
    group: Mapped[str] = mapped_column(String(64), primary_key=True)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)  # controller.rollout_staged.RolloutPlan fields
    state: Mapped[dict[str, Any]] = mapped_column(JSON)  # controller.rollout_staged.RolloutState fields
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


GROUP_TABLES = ("groups", "group_members", "rollouts")  # table names
