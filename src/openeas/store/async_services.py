"""The async services in the store: what the queue's wake-from-zero decision needs of each
(``openeas.queue.scale``). A read of the services and their current versions' route records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import text

from openeas.kernel.states import ServiceState

if TYPE_CHECKING:
    from openeas.store.db import Store


@dataclass(frozen=True)
class AsyncService:
    """What the wake-up decision needs of an async service."""

    name: str
    running: bool  # desired state Running (not Stopped, not Deleting)
    desired_replicas: int


def async_services(store: Store) -> list[AsyncService]:
    """The async services in the store (their current version's route record has a queue)."""
    rows = []
    with store.engine.connect() as conn:
        result = conn.execute(
            text(
                "SELECT s.name, s.state, s.desired_replicas, v.route FROM services s "
                "JOIN versions v ON v.service = s.name AND v.version = s.current_version"
            )
        ).all()
    for name, state, desired, route in result:
        record = json.loads(route) if isinstance(route, str) else (route or {})
        if record.get("queue"):
            rows.append(AsyncService(name, state == ServiceState.RUNNING, int(desired)))
    return rows
