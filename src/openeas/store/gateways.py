"""The gateway registry (schema v14): one row per gateway process that follows the store.

Each gateway writes its own row (``openeas.gateway.routing.registry``, with its DB-API driver:
the gateway never imports this module): id, advertised URL, host, pid, start time, heartbeat and
the routing version it applied. The control plane reads them here (``Store.gateways``) for the
routing wait, ``GET /api/v1/gateways``, ``openeas gateways`` and /metrics; it also advertises
where remote gateways send their counters (`advertise_stats`). Values and the liveness rule are
in :mod:`openeas.kernel.fleet`.

The store calls these helpers inside its own transactions (store/db.py).
"""

from __future__ import annotations

import secrets

from sqlalchemy import Connection, Float, Integer, String, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from openeas.kernel.fleet import GATEWAYS_TABLE, NOW_SQL, STATS_ADDR_KEY, STATS_KEY_KEY, GatewayRecord
from openeas.store.schema import Base, Meta
from openeas.store.secrets import TokenCipher

STATS_KEY_BYTES = 32  # HMAC-SHA256 key of the counters' datagrams


class GatewayRow(Base):
    __tablename__ = GATEWAYS_TABLE
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    url: Mapped[str] = mapped_column(String(512))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)  # epoch seconds, database clock
    heartbeat_at: Mapped[float] = mapped_column(Float)  # epoch seconds, database clock
    applied_version: Mapped[int] = mapped_column(Integer, default=-1)  # -1: no table applied yet


def create_table(conn: Connection) -> None:
    """Schema v14 (portable DDL: SQLite and PostgreSQL)."""
    Base.metadata.create_all(conn, tables=[Base.metadata.tables[GATEWAYS_TABLE]])


def db_now(s: Session) -> float:
    """The database's clock, epoch seconds (the clock heartbeats are written with)."""
    dialect = s.get_bind().dialect.name
    return float(s.execute(text(f"SELECT {NOW_SQL.get(dialect, NOW_SQL['sqlite'])}")).scalar_one())


def records(s: Session) -> list[GatewayRecord]:
    """Every registered gateway, oldest first."""
    rows = s.scalars(select(GatewayRow).order_by(GatewayRow.started_at, GatewayRow.id))
    return [
        GatewayRecord(r.id, r.url, r.host, r.pid, r.started_at, r.heartbeat_at, r.applied_version)
        for r in rows
    ]


def advertise_stats(s: Session, addr: str, cipher: TokenCipher) -> bytes:
    """Record ``addr`` ("host:port", UDP) as where remote gateways send their counters; the key
    that signs them (created once, stored encrypted) is returned."""
    blob = s.get(Meta, STATS_KEY_KEY)
    if blob is None:
        key = secrets.token_bytes(STATS_KEY_BYTES)
        s.add(Meta(key=STATS_KEY_KEY, value=cipher.encrypt(key.hex())))
    else:
        key = bytes.fromhex(cipher.decrypt(blob.value))
    row = s.get(Meta, STATS_ADDR_KEY)
    if row is None:
        s.add(Meta(key=STATS_ADDR_KEY, value=addr))
    else:
        row.value = addr
    return key
