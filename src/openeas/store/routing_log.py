"""The routing change log (schema v15): which services and groups each routing version changed.

Every bump of the store's ``routing_version`` (``Store._bump_routing``) writes, in the same
transaction, one row per service or group whose routing changed at that version, or one row of
kind ``all`` when the writer does not say what changed. A gateway that holds the table of version
N reads the rows of versions N+1..M in the snapshot where it reads M and re-reads only those
services and groups (openeas.gateway.routing.changes). Every version has at least one row, so a
version without one (pruned, or bumped before this schema) tells the gateway that the log cannot
cover its gap: it rebuilds its whole table, as it does on start. The routing version in ``meta``
stays the truth; the log only says where to look.

The store calls these helpers inside its own transactions (store/db.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, Integer, String, delete, insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from openeas.kernel.routing import CHANGED_ALL, CHANGED_GROUP, CHANGED_SERVICE, ROUTING_LOG_TABLE
from openeas.store.schema import Base

# Versions of rows kept: a gateway further behind rebuilds its whole table. At one change per
# replica phase, 1,000 versions cover a 1,000-replica rollout seen by a gateway that missed it all.
KEEP_VERSIONS = 1000
# Rows are pruned when the version is a multiple of this (one indexed delete per 100 bumps), so
# the log holds between KEEP_VERSIONS and KEEP_VERSIONS + PRUNE_EVERY versions.
PRUNE_EVERY = 100


class RoutingChangeRow(Base):
    __tablename__ = ROUTING_LOG_TABLE
    version: Mapped[int] = mapped_column(Integer, primary_key=True)  # the routing version it made
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # CHANGED_SERVICE, _GROUP or _ALL
    name: Mapped[str] = mapped_column(String(64), primary_key=True)  # the service or group; "" for all


def create_table(conn: Connection) -> None:
    """Schema v15 (portable DDL: SQLite and PostgreSQL); bumps before it have no rows (a gateway
    that held a table from before rebuilds it whole once)."""
    Base.metadata.create_all(conn, tables=[Base.metadata.tables[RoutingChangeRow.__tablename__]])


def record(s: Session, version: int, services: Iterable[str] = (), groups: Iterable[str] = ()) -> None:
    """What ``version`` changed: ``services`` and ``groups`` by name; nothing named = everything."""
    rows = [{"version": version, "kind": CHANGED_SERVICE, "name": n} for n in sorted(set(services))]
    rows += [{"version": version, "kind": CHANGED_GROUP, "name": n} for n in sorted(set(groups))]
    if not rows:
        rows = [{"version": version, "kind": CHANGED_ALL, "name": ""}]
    s.execute(insert(RoutingChangeRow), rows)
    if version % PRUNE_EVERY == 0:
        s.execute(delete(RoutingChangeRow).where(RoutingChangeRow.version <= version - KEEP_VERSIONS))
