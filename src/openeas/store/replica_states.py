"""What the reconciler reads of every replica on each pass, in one core-SQL query.

A pass reads every replica row (10,000 on a large cluster: bench/cluster.py). Loading them as ORM
objects built an identity-mapped instance per row and decoded two JSON columns per row
(``phase_times``, ``cold_start``) that a pass never reads: about half a steady pass. This reads
only the columns a pass decides on, as plain tuples, into small frozen records.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from openeas.store.db import Store
from openeas.store.schema import ReplicaRow


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """One replica as a reconcile pass sees it (the columns of ``ReplicaRow`` of those names)."""

    id: str
    service: str
    version: int
    phase: str  # an openeas.kernel.states.ReplicaPhase value
    stopping: int  # 0 or 1
    standby: int  # 0 or 1
    pid: int | None
    created_at: float  # epoch seconds
    node: str | None  # the runtime's node (a Ray node id); None: the server's machine


_COLUMNS = (
    ReplicaRow.id,
    ReplicaRow.service,
    ReplicaRow.version,
    ReplicaRow.phase,
    ReplicaRow.stopping,
    ReplicaRow.standby,
    ReplicaRow.pid,
    ReplicaRow.created_at,
    ReplicaRow.node,
)


def replica_states(store: Store) -> list[ReplicaState]:
    """Every replica, oldest first (as ``Store.replicas``), in one query."""
    with store.read() as s:
        rows = s.execute(select(*_COLUMNS).order_by(ReplicaRow.created_at)).all()
    return [ReplicaState(*row) for row in rows]
